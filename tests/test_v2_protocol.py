"""The Open Inference Protocol in-process (FastAPI TestClient, lifespan included) on a real exported model.

Binary bodies are built and read with tritonclient's own BYTES codec (`serialize_byte_tensor` /
`deserialize_bytes_tensor`), so the wire format is the client library's, not this project's.
"""

from __future__ import annotations

import base64
import json
import time
import warnings

import numpy as np
import pytest
from support.app import reuse
from support.images import image
from support.paths import SKLEARN_IMAGES
from support.settings import cpu_settings
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from service.app import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PHOTOS = [(SKLEARN_IMAGES / name).read_bytes() for name in ("china.jpg", "flower.jpg")]
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def client(exported, loaded_model):
    root, _, _ = exported
    settings = cpu_settings(root, max_files_per_request=4, max_file_bytes=2_000_000)
    with TestClient(create_app(settings, loader=reuse(loaded_model))) as c:  # the session's loaded model
        deadline = time.monotonic() + 60
        while c.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, c.get("/v2/health/ready").json()
            time.sleep(0.05)
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def json_request(*images: bytes, shape: list[int] | None = None, **extra) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": shape or [len(images)],
                        "data": [b64(i) for i in images]}], **extra}


def binary_request(images: list[bytes], shape: list[int], outputs: list[dict] | None = None,
                   size_delta: int = 0, cut: int = 0, extra: bytes = b"") -> tuple[bytes, dict[str, str]]:
    raw = serialize_byte_tensor(np.array(images, dtype=object).reshape(shape)).item()
    header = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": shape,
                          "parameters": {"binary_data_size": len(raw) + size_delta}}]}
    if outputs is not None:
        header["outputs"] = outputs
    text = json.dumps(header).encode()
    return text + raw[:len(raw) - cut] + extra, {HEADER: str(len(text))}


def predict_probs(client: TestClient, data: bytes, crops: str) -> np.ndarray:
    r = client.post("/predict", params={"top_k": 10, "crops": crops}, files={"file": ("x.jpg", data)})
    assert r.status_code == 200, r.text
    probs = np.zeros(10)
    for p in r.json()["results"][0]["predictions"]:
        probs[p["index"]] = p["probability"]
    return probs


def test_server_health_and_metadata(client):
    assert client.get("/v2").json() == {"name": "alexnet-serving", "version": client.app.version, "extensions": [
        "binary_tensor_data", "classification", "model_repository", "model_configuration", "parameters"]}
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    meta = client.get("/v2/models/testnet").json()
    assert meta.pop("parameters")["crop_size"] == 224  # issue 19: the version's preprocessing and source
    assert meta == {"name": "testnet", "versions": ["1"], "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}],
                    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                                {"name": "features", "datatype": "FP32", "shape": [-1, 4096]}]}  # issue 20
    assert client.get("/v2/models/testnet/versions/1").json()["versions"] == ["1"]
    assert client.get("/v2/models/testnet/ready").json() == {"name": "testnet", "ready": True}
    assert client.get("/v2/models/testnet/versions/1/ready").status_code == 200
    config = client.get("/v2/models/testnet/config").json()
    assert config["max_batch_size"] == 4 and config["input"][0]["dims"] == [1]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]},
                                {"name": "features", "data_type": "TYPE_FP32", "dims": [4096]}]  # issue 20
    assert config["version_policy"] == {"latest": {"num_versions": 1}}


@pytest.mark.parametrize("path", ["/v2/models/nope", "/v2/models/nope/ready", "/v2/models/nope/config",
                                  "/v2/models/testnet/versions/9", "/v2/models/testnet/versions/9/ready"])
def test_unknown_model_or_version_is_404_json(client, path):
    r = client.get(path)
    assert r.status_code == 404 and set(r.json()) == {"error"}
    assert ("'nope'" in r.json()["error"]) or ("no version 9" in r.json()["error"])


@pytest.mark.parametrize("crops", ["ten", "center"])
def test_json_infer_equals_predict(client, crops):
    r = client.post("/v2/models/testnet/infer", json=json_request(*PHOTOS, id="req-7", parameters={"crops": crops},
                                                                   outputs=[{"name": "probabilities"}]))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert (body["id"], body["model_name"], body["model_version"]) == ("req-7", "testnet", "1")
    assert body["parameters"] == {"crops": crops}
    (out,) = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [2, 10])
    got = np.array(out["data"]).reshape(2, 10)
    for row, photo in zip(got, PHOTOS, strict=True):
        np.testing.assert_allclose(row, predict_probs(client, photo, crops), rtol=0, atol=1e-6)


def test_classification_extension_and_default_outputs(client):
    body = client.post("/v2/models/testnet/infer", json=json_request(PHOTOS[0], shape=[1, 1], outputs=[
        {"name": "probabilities"}, {"name": "probabilities", "parameters": {"classification": 3}}])).json()
    probs = np.array(body["outputs"][0]["data"])
    strings = body["outputs"][1]
    assert (strings["datatype"], strings["shape"]) == ("BYTES", [1, 3])
    parsed = [s.split(":") for s in strings["data"]]
    assert [int(i) for _, i, _ in parsed] == list(np.argsort(-probs, kind="stable")[:3])
    for value, index, label in parsed:
        assert abs(float(value) - probs[int(index)]) < 1e-6 and label
    default = client.post("/v2/models/testnet/infer", json=json_request(PHOTOS[0])).json()
    assert [o["name"] for o in default["outputs"]] == ["probabilities"]  # no outputs asked: all, as JSON


def test_binary_tensor_extension_both_ways(client):
    content, headers = binary_request(PHOTOS, [2, 1], outputs=[
        {"name": "probabilities", "parameters": {"binary_data": True}},
        {"name": "probabilities", "parameters": {"binary_data": True, "classification": 2}}])
    r = client.post("/v2/models/testnet/versions/1/infer", content=content, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    split = int(r.headers[HEADER])
    header, blob = json.loads(r.content[:split]), r.content[split:]
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sum(sizes) == len(blob)
    probs = np.frombuffer(blob[:sizes[0]], "<f4").reshape(2, 10)
    strings = deserialize_bytes_tensor(blob[sizes[0]:]).reshape(2, 2)
    want = client.post("/v2/models/testnet/infer", json=json_request(*PHOTOS)).json()["outputs"][0]["data"]
    np.testing.assert_allclose(probs.ravel(), want, rtol=0, atol=1e-6)
    assert int(strings[1, 0].decode().split(":")[1]) == int(np.argmax(probs[1]))


def post(client: TestClient, body: dict | bytes, headers: dict | None = None):
    if isinstance(body, dict):
        return client.post("/v2/models/testnet/infer", json=body, headers=headers)
    return client.post("/v2/models/testnet/infer", content=body, headers=headers)


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.5]}]}, 400,
     'inputs[0].datatype: expected BYTES (encoded image files), got "FP32"'),
    (json_request(PHOTOS[0], shape=[1, 2]), 400, "inputs[0].shape: expected [N] or [N, 1]"),
    (json_request(PHOTOS[0], shape=[0]), 400, "inputs[0].shape: expected [N] or [N, 1] with N >= 1"),
    (json_request(PHOTOS[0], shape=[2]), 400, "inputs[0]: the shape [2] holds 2 elements but data has 1"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}, 400,
     "inputs[0].data[0]: not valid base64"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [7]}]}, 400,
     "inputs[0].data[0]: expected a base64 string"),
    ({"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}, 400,
     "inputs[0].name: unknown input \"pixels\""),
    ({"inputs": []}, 400, "inputs: expected one input"),
    ({}, 400, "inputs: expected a list"),
    (json_request(PHOTOS[0], outputs=[{"name": "logits"}]), 400, "outputs[0].name: unknown output \"logits\""),
    (json_request(PHOTOS[0], outputs=[{"name": "probabilities", "parameters": {"classification": 11}}]), 422,
     "outputs[0].parameters.classification: must be between 1 and 10"),
    (json_request(PHOTOS[0], parameters={"crops": "five"}), 400, "parameters.crops: expected one of"),
    (json_request(*[PHOTOS[0]] * 5), 413, "inputs[0].shape: 5 images, more than the limit of 4"),
    (json_request(b"just text, not an image"), 415, "inputs[0] element 0: not a supported image"),
    (json_request(PHOTOS[0][:30000]), 400, "inputs[0] element 0: corrupt or truncated image"),
    (json_request(b""), 422, "inputs[0] element 0: the file is empty"),
    (b"{not json", 400, "the request is not valid JSON"),
])
def test_malformed_requests_name_the_field(client, body, status, needle):
    r = post(client, body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and needle in r.json()["error"], r.json()


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"size_delta": 10}, "binary_data_size: "),  # says more bytes than the body has
    ({"size_delta": -3, "cut": 3}, "inputs[0]: element 1 says"),  # the second element is cut short
    ({"extra": b"xyz"}, "3 bytes after the inputs' binary data belong to no input"),
])
def test_binary_size_that_does_not_match_is_400(client, kwargs, needle):
    content, headers = binary_request(PHOTOS, [2], **kwargs)
    r = post(client, content, headers)
    assert r.status_code == 400 and needle in r.json()["error"], r.json()
    r = post(client, content, {HEADER: str(len(content) + 5)})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_binary_count_must_match_the_shape(client):
    content, headers = binary_request(PHOTOS, [2])
    header_len = int(headers[HEADER])
    header = json.loads(content[:header_len])
    header["inputs"][0]["shape"] = [3]
    text = json.dumps(header).encode()
    r = post(client, text + content[header_len:], {HEADER: str(len(text))})
    assert r.status_code == 400 and "binary data holds 2 elements but the shape says 3" in r.json()["error"]


def test_repository_extension(client):
    r = client.post("/v2/repository/index")
    assert r.json() == [{"name": "testnet", "version": "1", "state": "READY", "reason": ""}]
    assert client.post("/v2/repository/index", json={"ready": True}).json()[0]["state"] == "READY"
    assert client.post("/v2/repository/models/testnet/unload").status_code == 200
    assert client.post("/v2/repository/index").json()[0] == {"name": "testnet", "version": "1",
                                                             "state": "UNAVAILABLE", "reason": "unloaded"}
    r = client.get("/v2/models/testnet/ready")
    assert r.status_code == 404 and "unloaded" in r.json()["error"]
    assert client.get("/v2/health/ready").status_code == 503 and client.get("/health/ready").status_code == 503
    r = post(client, json_request(PHOTOS[0]))
    assert r.status_code == 404 and "load it with POST /v2/repository/models/testnet/load" in r.json()["error"]
    assert client.post("/v2/repository/models/testnet/load").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert post(client, json_request(PHOTOS[0])).status_code == 200
    r = client.post("/v2/repository/models/nope/load")
    assert r.status_code == 404 and "no model named 'nope'" in r.json()["error"]


def test_control_is_refused_with_several_workers(exported, loaded_model):
    root, _, _ = exported
    settings = cpu_settings(root, workers=2)
    with TestClient(create_app(settings, loader=reuse(loaded_model))) as c:
        r = c.post("/v2/repository/models/testnet/unload")
        assert r.status_code == 409 and "needs a single worker" in r.json()["error"]


def test_v2_and_own_routes_keep_their_error_shapes(client):
    assert set(client.get("/v2/nope").json()) == {"error"}
    assert set(client.get("/nope").json()) == {"detail"}
    r = client.get("/v2/models/testnet/versions/x")
    assert r.status_code == 422 and "path parameter 'version'" in r.json()["error"]
    r = client.post("/predict", params={"model": "nope"}, files={"file": ("a.png", image("PNG"))})
    assert r.status_code == 404 and "no model named 'nope'" in r.json()["detail"]
