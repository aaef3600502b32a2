"""Request ids, JSON logs and OpenTelemetry traces, against a real `alexnet-serve` (uvicorn) on a real exported model.

- one server with ``--log-format json`` and tracing on, exporting over OTLP/HTTP to a receiver in this test (a
  tiny http.server decoding the protobuf ExportTraceServiceRequest with opentelemetry-proto): request ids in
  every answer and every log line, the log lines JSON with the same request and trace ids, the exported span
  tree joined to the client's ``traceparent``, no span for probes or scrapes;
- one uvicorn in this process (the app built by `create_app` with an in-memory span exporter): the span tree
  with its model/version attributes and parent links, the sampling ratio, and a shadow span;
- the service starts and answers without the OpenTelemetry packages when tracing is off.
"""

from __future__ import annotations

import base64
import gzip
import http.server
import itertools
import json
import re
import shutil
import threading
import time

import httpx
import pytest
from support.images import image
from support.server import free_port, start_server, stop_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
STEPS = ["read", "preprocess", "queue", "inference", "postprocess"]
PHOTO = image("JPEG", 96, 72, seed=3)


class Receiver:
    """An OTLP/HTTP traces endpoint: every span it is sent, decoded (opentelemetry-proto)."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        spans, paths = [], []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                paths.append((self.path, self.headers.get("Content-Type")))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            spans.append((service, span))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args):
                pass

        self.spans, self.paths = spans, paths
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def attributes(span) -> dict:
    out = {}
    for a in span.attributes:
        value = a.value
        out[a.key] = value.string_value if value.HasField("string_value") else value.int_value
    return out


@pytest.fixture(scope="module")
def store(exported, tmp_path_factory):
    _, version, _ = exported
    root = tmp_path_factory.mktemp("observability") / "store"
    shutil.copytree(version.path, root / "testnet" / "1")
    return root


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def served(store, receiver, tmp_path_factory):
    env = {"ALEXNET_LOG_LEVEL": "info", "ALEXNET_TRACING": "true", "ALEXNET_TRACING_ENDPOINT": receiver.url,
           "ALEXNET_WARMUP_BATCH": "1", "ALEXNET_REPOSITORY_POLL_SECONDS": "0",
           "OTEL_BSP_SCHEDULE_DELAY": "200"}  # the SDK's batch delay (5 s by default): spans arrive sooner
    server = start_server(store, tmp_path_factory.mktemp("obs-serve") / "serve.log", "--providers",
                          "CPUExecutionProvider", "--log-format", "json", env=env)
    yield server
    stop_server(server)


def v2_body(data: bytes, request_id: str | None = None) -> dict:
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
            "parameters": {"crops": "center"}}
    return {**body, "id": request_id} if request_id else body


def log_lines(server) -> list[dict]:
    return [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]


def wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


# -- request ids ---------------------------------------------------------------------------------------------
def test_every_answer_carries_its_request_id(served):
    with served.client() as c:
        r = c.post("/predict", params={"crops": "center", "top_k": 1}, files={"file": ("a.jpg", PHOTO)},
                   headers={"X-Request-ID": "client-id-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-1"
        r = c.post("/v2/models/testnet/infer", json=v2_body(PHOTO, "infer-7"), headers={"X-Request-ID": "client-id-2"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-2"
        assert r.json()["id"] == "infer-7"  # the protocol's own id is echoed in the body, as it says
        made = c.get("/health/ready").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        assert c.get("/health/ready").headers["x-request-id"] != made
        for path in ("/v1/models/nope", "/v2/models/nope/infer"):  # errors carry it too
            r = c.request("GET" if path.startswith("/v1") else "POST", path, headers={"X-Request-ID": "e-1"})
            assert r.status_code == 404 and r.headers["x-request-id"] == "e-1"


@pytest.mark.parametrize(("path", "key"), [("/predict", "detail"), ("/v2/models/testnet/infer", "error"),
                                           ("/health/live", "detail"), ("/v2/health/live", "error")])
@pytest.mark.parametrize("bad", ["has space", "x" * 129, "semi;colon", "quote\"d"])
def test_a_malformed_request_id_is_a_400_saying_so(served, path, key, bad):
    with served.client() as c:
        r = c.request("GET" if "health" in path else "POST", path, headers={"X-Request-ID": bad}, content=b"{}")
    assert r.status_code == 400
    assert "X-Request-ID" in r.json()[key] and "is not a request id" in r.json()[key]
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])  # a fresh one, never the bad one echoed


# -- logs ------------------------------------------------------------------------------------------------------
def test_log_lines_are_json_and_carry_the_ids(served):
    with served.client() as c:
        ok = c.post("/predict", params={"crops": "center", "top_k": 1}, files={"file": ("a.jpg", PHOTO)},
                    headers={"X-Request-ID": "log-ok", "traceparent": TRACEPARENT})
        bad = c.post("/predict", params={"crops": "center"}, files={"file": ("cut.jpg", PHOTO[:200])},
                     headers={"X-Request-ID": "log-bad"})
        v2 = c.post("/v2/models/testnet/infer", json=v2_body(PHOTO), headers={"X-Request-ID": "log-v2"})
    assert (ok.status_code, bad.status_code, v2.status_code) == (200, 400, 200)

    def line(request_id):
        return next((e for e in log_lines(served) if e.get("request_id") == request_id and e.get("request")), None)

    entry = wait_for(lambda: line("log-v2") and line("log-ok"))
    text = served.log.read_text().splitlines()
    assert text and all(json.loads(x) for x in text if x.strip())  # every line of the log is JSON, uvicorn's too
    entry = line("log-ok")
    assert entry["level"] == "info" and entry["logger"] == "service.requests"
    assert entry["trace_id"] == TRACE_ID  # the client's traceparent's: the request span joined the client's trace
    assert (entry["route"], entry["status"], entry["model"], entry["version"]) == ("/predict", 200, "testnet", 1)
    assert (entry["crops"], entry["images"], entry["routing"]) == ("center", 1, "default")
    assert set(STEPS) <= set(entry["timings_ms"]) and entry["timings_ms"]["total"] > 0
    assert entry["batch"] == {"patches": 1, "requests": 1}
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", entry["time"])
    failed = line("log-bad")
    assert failed["status"] == 400 and failed["level"] == "info"  # a client's mistake: one line, not a warning
    assert failed["error"].startswith("file 'cut.jpg': corrupt") and failed["reason"] == "corrupt"
    assert line("log-v2")["route"] == "/v2/models/{model}/infer"
    assert re.fullmatch(r"[0-9a-f]{32}", line("log-v2")["trace_id"])  # tracing is on: the span's own trace
    assert not [e for e in log_lines(served) if e.get("route", "").startswith("/health")]  # probes: debug only


# -- traces over OTLP/HTTP ---------------------------------------------------------------------------------------
def test_spans_reach_an_otlp_receiver_as_one_tree_per_request(served, receiver):
    with served.client() as c:
        r = c.post("/predict", params={"crops": "center", "top_k": 1}, files={"file": ("a.jpg", PHOTO)},
                   headers={"X-Request-ID": "traced-1", "traceparent": TRACEPARENT})
        assert r.status_code == 200
        for path in ("/health/live", "/health/ready", "/v2/health/ready", "/metrics"):
            assert c.get(path).status_code == 200

    def request_span():
        return next((s for _, s in receiver.spans if attributes(s).get("alexnet.request_id") == "traced-1"), None)

    root = wait_for(request_span)
    assert all(path == "/v1/traces" and kind == "application/x-protobuf" for path, kind in receiver.paths)
    assert root.trace_id.hex() == TRACE_ID and root.parent_span_id.hex() == "00f067aa0ba902b7"
    assert root.name == "POST /predict"
    attrs = attributes(root)
    assert (attrs["alexnet.model"], attrs["alexnet.version"], attrs["alexnet.crops"]) == ("testnet", 1, "center")
    def children_of_root():
        found = {s.name: s for _, s in receiver.spans if s.parent_span_id == root.span_id}
        return found if len(found) >= len(STEPS) else None

    children = wait_for(children_of_root)
    assert list(children) == STEPS or set(STEPS) <= set(children)
    assert all(children[n].trace_id == root.trace_id for n in STEPS)
    assert attributes(children["inference"])["alexnet.batch.patches"] == 1
    ordered = [children[n] for n in STEPS]
    assert all(a.end_time_unix_nano <= b.start_time_unix_nano + 1000 for a, b in itertools.pairwise(ordered))
    assert root.start_time_unix_nano <= ordered[0].start_time_unix_nano
    assert ordered[-1].end_time_unix_nano <= root.end_time_unix_nano
    service = next(svc for svc, s in receiver.spans if s.span_id == root.span_id)
    assert service["service.name"] == "alexnet-serving"
    time.sleep(0.5)  # a probe's span, were there one, would be exported by now
    assert not [s.name for _, s in receiver.spans if "health" in s.name or "metrics" in s.name]


# -- in process: the in-memory exporter ---------------------------------------------------------------------------
class InProcess:
    """`create_app` under a real uvicorn in a thread of this process, so its spans can go to an in-memory exporter."""

    def __init__(self, app) -> None:
        import uvicorn

        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self._ready(), timeout=120)

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/health/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


class FailingRunner:
    """A version whose every model run fails (a broken build), to shadow to."""

    def __init__(self) -> None:
        self.waiting = 0

    async def start(self):
        pass

    async def stop(self):
        pass

    async def infer(self, patches):
        raise RuntimeError("this version's model run fails")


@pytest.fixture(scope="module")
def in_process(store, loaded_model, tmp_path_factory):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from support.app import clone_version, reuse
    from support.settings import cpu_settings

    from service.app import create_app
    from service.runner import ThreadRunner

    root = tmp_path_factory.mktemp("in-process") / "store"
    shutil.copytree(store, root)
    clone_version(root, "testnet", 1)

    def runner(model, metrics, _settings):
        if model.metadata.version == 2:
            return FailingRunner()
        return ThreadRunner(model, metrics, concurrency=1, adaptive=False, max_queued=0, retry_after=1)

    exporter = InMemorySpanExporter()
    settings = cpu_settings(root, version_policy="all", tracing=True, tracing_sample_ratio=0.0,
                            traffic="testnet=1:1", shadow="testnet=2:100")
    app = create_app(settings, loader=reuse(loaded_model), runner_factory=runner, span_exporter=exporter)
    server = InProcess(app)
    yield server, exporter, app
    server.stop()


def test_the_span_tree_has_the_model_and_version_and_follows_the_sampling(in_process):
    server, exporter, _app = in_process
    exporter.clear()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        sampled = c.post("/predict", params={"crops": "center", "top_k": 1}, files={"file": ("a.jpg", PHOTO)},
                         headers={"X-Request-ID": "mem-1", "traceparent": TRACEPARENT})
        unsampled = c.post("/predict", params={"crops": "center", "top_k": 1}, files={"file": ("a.jpg", PHOTO)},
                           headers={"X-Request-ID": "mem-2"})  # ratio 0, no client trace: not traced
    assert sampled.status_code == unsampled.status_code == 200
    assert sampled.json()["model"]["version"] == 1

    def with_shadow():
        spans = exporter.get_finished_spans()
        return spans if any(s.name == "shadow" for s in spans) else None

    spans = wait_for(with_shadow)
    root = next(s for s in spans if s.attributes.get("alexnet.request_id") == "mem-1")
    assert not [s for s in spans if s.attributes.get("alexnet.request_id") == "mem-2"]
    assert format(root.context.trace_id, "032x") == TRACE_ID and root.kind.name == "SERVER"
    assert (root.attributes["alexnet.model"], root.attributes["alexnet.version"]) == ("testnet", 1)
    assert root.attributes["alexnet.routing"] == "split"
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
    assert set(STEPS) | {"shadow"} <= set(children), sorted(children)
    assert {s.name for s in spans} <= set(STEPS) | {"shadow", root.name}  # no http send/receive spans
    shadow = children["shadow"]
    assert (shadow.attributes["alexnet.version"], shadow.attributes["alexnet.shadow.outcome"]) == (2, "error")


def test_a_failing_shadow_causes_no_client_error(in_process):
    server, _exporter, app = in_process
    metrics = app.state.service.metrics
    before = metrics.shadow_requests.labels("testnet", "2", "error")._value.get()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        answers = [c.post("/predict", params={"crops": "center", "top_k": 1}, files={"file": ("a.jpg", PHOTO)})
                   for _ in range(30)]
    assert [a.status_code for a in answers] == [200] * 30
    assert {a.json()["model"]["version"] for a in answers} == {1}
    assert wait_for(lambda: metrics.shadow_requests.labels("testnet", "2", "error")._value.get() - before >= 30)


# -- without OpenTelemetry --------------------------------------------------------------------------------------
# What the serve extra adds; the API package alone is FastAPI's own dependency (its telemetry hooks), so a machine
# without the extra still has it.
OTEL_EXTRA = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.instrumentation", "opentelemetry.proto")
_BLOCKER = """
import importlib.abc, importlib.machinery, sys
BLOCK = {blocked!r}
class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ModuleNotFoundError("No module named " + repr(module.__name__) + " (blocked by the test)")
class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, _Refuse()) if name.startswith(BLOCK) else None
sys.meta_path.insert(0, _Blocker())
sys.path.insert(0, "tests")
"""


def python_without_otel(code: str):
    import subprocess
    import sys

    from support.paths import REPO

    return subprocess.run([sys.executable, "-c", _BLOCKER.format(blocked=OTEL_EXTRA) + code], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_service_runs_without_opentelemetry_when_tracing_is_off(store):
    code = f"""
import asyncio, httpx
from support.settings import cpu_settings
from service.app import create_app
app = create_app(cpu_settings({str(store)!r}, warmup_batch=1))
async def main():
    async with app.router.lifespan_context(app):
        while not app.state.service.repository.ready:
            await asyncio.sleep(0.1)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.post("/predict", params={{"crops": "center"}}, files={{"file": ("a.jpg", {PHOTO!r})}},
                             headers={{"X-Request-ID": "no-otel"}})
            print(r.status_code, r.headers["x-request-id"])
asyncio.run(main())
assert not [m for m in sys.modules if m.startswith(BLOCK)], "imported"
print("ok")
"""
    done = python_without_otel(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["200", "no-otel", "ok"], done.stdout


def test_tracing_on_without_opentelemetry_says_what_to_install(store):
    code = f"""
from support.settings import cpu_settings
from service.app import create_app
try:
    create_app(cpu_settings({str(store)!r}, tracing=True))
except ImportError as exc:
    print(exc)
"""
    done = python_without_otel(code)
    assert "ALEXNET_TRACING=true needs the OpenTelemetry packages" in done.stdout, done.stdout + done.stderr[-2000:]


def test_a_bad_traceparent_is_ignored(served):
    with served.client() as c:
        r = c.post("/predict", params={"crops": "center", "top_k": 1}, files={"file": ("a.jpg", PHOTO)},
                   headers={"X-Request-ID": "bad-tp", "traceparent": "00-zz-yy-01"})
    assert r.status_code == 200
    entry = wait_for(lambda: next((e for e in log_lines(served) if e.get("request_id") == "bad-tp"), None))
    assert re.fullmatch(r"[0-9a-f]{32}", entry["trace_id"]) and entry["trace_id"] != TRACE_ID

