"""The OpenAPI document matches the server: schemathesis generates requests for every operation of the live
``/openapi.json`` of a real `alexnet-serve` (uvicorn) over a real exported model, and checks each answer: no 5xx,
a status code the document lists for that operation, its documented content type, and a body that validates
against the documented schema. Fixed seed (derandomised) and a bounded number of examples per operation.

Each operation runs twice: with the path parameters schemathesis generates (unknown models: the 404s and 422s),
and with the served model's name and version put in, so the bodies and queries reach a real model (its
predictions, its 400s and 413s)."""

from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode, checks  # noqa: E402
from support.server import start_server, stop_server  # noqa: E402

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]
EXAMPLES = 6  # per operation and way: ~30 operations × 2 × 6 requests, in well under a minute on 2 cores


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    root, version, _ = exported
    server = start_server(root, tmp_path_factory.mktemp("contract") / "serve.log", "--providers",
                          "CPUExecutionProvider")
    yield server, {"model": version.name, "name": version.name, "version": version.version}
    stop_server(server)


def _conforms(operation, mode, base_url: str, path_parameters: dict, statuses: dict):
    """One operation's hypothesis test: its examples and generated cases, each called and checked."""

    @given(case=operation.as_strategy(mode, path_parameters=path_parameters or None))
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case):
        response = case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=60)
        statuses.setdefault(response.status_code, set()).add(operation.label)

    return run


@pytest.mark.slow
def test_real_images_answer_as_documented(served, sample_images):
    """A real photo through both ways in, checked like the generated cases: the 200 answers' schemas."""
    import base64

    server, real = served
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    photo = sample_images[0].read_bytes()
    predict = schema["/predict"]["POST"]
    case = predict.Case(body={"files": [photo]}, media_type="multipart/form-data", query={"top_k": 3})
    assert case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60).status_code == 200
    for path in ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"):
        infer = schema[path]["POST"]
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "data": [base64.b64encode(photo).decode()]}],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}
        parameters = {k: real[k] for k in ("model", "version") if "{" + k + "}" in path}
        case = infer.Case(path_parameters=parameters, body=body, media_type="application/json")
        response = case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)
        assert response.status_code == 200, response.text


def test_every_reference_in_the_document_resolves(served):
    """A `$ref` that points nowhere hides that part of the document from every client generator."""
    server, _ = served
    document = httpx.get(f"{server.url}/openapi.json").json()
    refs: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    schemas = document["components"]["schemas"]
    assert "#/components/schemas/RequestedOutputSpec" in refs  # the v2 infer body's outputs are documented
    assert {r for r in refs if r.removeprefix("#/components/schemas/") not in schemas} == set()
    assert "HTTPValidationError" not in schemas  # the service answers 422 in its own two shapes


@pytest.mark.slow
def test_every_operation_conforms_to_the_document(served):
    """Each operation in turn (schemathesis' own pytest plugin does not load under this pytest), every failure
    gathered, so one run names every operation the document gets wrong."""
    server, real = served
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures, operations, statuses = {}, 0, {}
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        names = [p.name for p in operation.path_parameters]
        for mode in GenerationMode:
            for way, path_parameters in (("generated", {}), ("served model", {k: real[k] for k in names})):
                if way == "served model" and not names:
                    continue
                try:
                    _conforms(operation, mode, server.url, path_parameters, statuses)()
                except Unsatisfiable:  # negative mode, an operation without parameters: no wrong request to make
                    assert mode is GenerationMode.NEGATIVE and not names, operation.label
                except Exception as exc:  # a check's failure: keep it with its operation and go on
                    failures[f"{operation.label} ({mode.value}, {way} path)"] = str(exc)[:1500]
    assert operations >= 20, operations
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    # the run reached real answers, not only refusals: successes and the request errors the document lists
    assert {200, 400, 404, 413, 422} <= set(statuses), statuses
    # the repository operations unloaded the served model: load it again for whatever runs next on this server
    assert httpx.post(f"{server.url}/v2/repository/models/{real['name']}/load", timeout=60).status_code == 200
