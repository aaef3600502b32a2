"""The HTTP API in-process (FastAPI TestClient, lifespan included) on a real exported model.

Results are compared with an independent reference: torchvision's TenCrop (training/presets.py) and the
PyTorch twin of the exported model, softmax averaged over the patches.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from support.app import asgi_post, reuse
from support.settings import cpu_settings

from service.app import create_app
from service.errors import Overloaded
from service.runner import InferenceRunner, ThreadRunner
from service.settings import Settings
from training.presets import center_transform, ten_crop_transform

with warnings.catch_warnings():  # starlette asks for httpx2 in the test client; httpx is what is installed
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SKLEARN_IMAGES = Path(__import__("sklearn").__file__).parent / "datasets" / "images"
REAL_PHOTOS = ["china.jpg", "flower.jpg"]  # 640×427 JPEGs shipped with scikit-learn: no draft reduction
# From ../shared/data/imagenet-samples (shorter side < 512): an upscaled 170×170, a grayscale, EXIF'd ones
SAMPLE_PHOTOS = ["n02095889_Sealyham_terrier.JPEG", "n03908714_pencil_sharpener.JPEG",
                 "n02102480_Sussex_spaniel.JPEG", "n01440764_tench.JPEG"]


def png_bytes(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)
    img = Image.fromarray(arr).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(width, height, seed))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def settings_for(root: Path, **overrides) -> Settings:
    base = {"max_file_bytes": 2_000_000, "max_request_bytes": 6_000_000, "max_files_per_request": 4}
    return cpu_settings(root, **{**base, **overrides})


def wait_ready(client: TestClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout} s: {client.get('/health/ready').json()}")


@pytest.fixture(scope="module")
def client(exported):
    """An app that loads the model itself in its lifespan, like the real service."""
    root, _, _ = exported
    with TestClient(create_app(settings_for(root))) as c:
        wait_ready(c)
        yield c


def reference(torch_model, data: bytes, crops: str) -> np.ndarray:
    """Averaged softmax from torchvision's transforms and the PyTorch model: [K]."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = ten_crop_transform(mean, std)(img) if crops == "ten" else center_transform(mean, std)(img)[None]
    with torch.inference_mode():
        return torch.softmax(torch_model(x), dim=-1).mean(0).numpy()


def all_probs(result: dict, num_classes: int) -> np.ndarray:
    probs = np.full(num_classes, np.nan)
    for p in result["predictions"]:
        probs[p["index"]] = p["probability"]
    return probs


def real_photos(shared: bool) -> list[tuple[str, bytes]]:
    if not shared:
        return [(name, (SKLEARN_IMAGES / name).read_bytes()) for name in REAL_PHOTOS]
    from support.paths import SHARED_DATA

    folder = SHARED_DATA / "imagenet-samples"
    if not folder.is_dir():
        pytest.skip("../shared/data/imagenet-samples is not present")
    return [(name, (folder / name).read_bytes()) for name in SAMPLE_PHOTOS]


# -- results against the independent reference ----------------------------------------------------------
@pytest.mark.parametrize("shared", [False, True], ids=["sklearn-photos", "imagenet-samples"])
def test_ten_crop_equals_torchvision_tencrop_and_pytorch(client, exported, shared):
    _, version, torch_model = exported
    photos = real_photos(shared)
    r = client.post("/predict", params={"top_k": 10}, files=[("files", (n, d, "image/jpeg")) for n, d in photos])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["crops"] == "ten" and body["model"] == {"name": "testnet", "version": version.version}
    assert [res["filename"] for res in body["results"]] == [n for n, _ in photos]
    for (_name, data), result in zip(photos, body["results"], strict=True):
        got, want = all_probs(result, 10), reference(torch_model, data, "ten")
        assert np.abs(got - want).max() < 1e-4, (got, want)


def test_center_crop_equals_the_single_centre_patch(client, exported):
    _, _, torch_model = exported
    photos = [*real_photos(False), ("synthetic.png", png_bytes(300, 500, seed=3))]
    r = client.post("/predict", params={"top_k": 10, "crops": "center"},
                    files=[("files", (n, d, "application/octet-stream")) for n, d in photos])
    assert r.status_code == 200, r.text
    assert r.json()["crops"] == "center"
    for (_name, data), result in zip(photos, r.json()["results"], strict=True):
        got, want = all_probs(result, 10), reference(torch_model, data, "center")
        assert np.abs(got - want).max() < 1e-4
        assert np.abs(got - reference(torch_model, data, "ten")).max() > 1e-4  # really a different scheme


def test_top_k_ordering_labels_and_sum(client, exported):
    _, version, torch_model = exported
    labels = [lab.name for lab in version.metadata.labels]
    data = (SKLEARN_IMAGES / "flower.jpg").read_bytes()
    want = reference(torch_model, data, "ten")
    for k in (1, 3, 5, 10):
        r = client.post("/predict", params={"top_k": k}, files={"file": ("flower.jpg", data, "image/jpeg")})
        assert r.status_code == 200, r.text
        preds = r.json()["results"][0]["predictions"]
        assert len(preds) == k
        probs = [p["probability"] for p in preds]
        assert probs == sorted(probs, reverse=True)
        assert [p["index"] for p in preds] == list(np.argsort(-want, kind="stable")[:k])
        assert all(p["label"] == labels[p["index"]] for p in preds)
        assert all(p["id"] == version.metadata.labels[p["index"]].id for p in preds)
        assert 0 < sum(probs) <= 1 + 1e-6
    assert r.json()["top_k"] == 10 and abs(sum(probs) - 1) < 1e-5  # all classes: the whole distribution


def test_default_is_top_5_ten_crops_and_response_fields(client):
    r = client.post("/predict", files=[("files", ("a.png", png_bytes(seed=1), "image/png")),
                                       ("files", ("b.jpg", jpeg_bytes(seed=2), "image/jpeg"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["crops"] == "ten" and body["top_k"] == 5
    assert body["provider"] == "CPUExecutionProvider"
    assert [res["filename"] for res in body["results"]] == ["a.png", "b.jpg"]
    assert all(len(res["predictions"]) == 5 for res in body["results"])
    assert body["results"][1]["image"] == {"format": "JPEG", "width": 320, "height": 240}
    assert set(body["timing"]) == {"read_ms", "preprocess_ms", "inference_ms", "total_ms"}


def test_same_image_gives_same_answer_in_any_batch(client):
    a, b = png_bytes(seed=5), jpeg_bytes(seed=6)
    alone = client.post("/predict", files={"files": ("a.png", a)}).json()["results"][0]["predictions"]
    batch = client.post("/predict", files=[("files", ("b.jpg", b)), ("files", ("a.png", a)),
                                           ("files", ("b.jpg", b))]).json()["results"]
    for x, y in zip(alone, batch[1]["predictions"], strict=True):
        assert x["index"] == y["index"] and abs(x["probability"] - y["probability"]) < 1e-5
    assert batch[0]["predictions"] == batch[2]["predictions"]


# -- bad input: status and a message naming the file ------------------------------------------------------
def post_files(client: TestClient, *files: tuple[str, bytes], **params):
    return client.post("/predict", params=params, files=[("files", (n, d, "application/octet-stream"))
                                                         for n, d in files])


def assert_error(r, status: int, *needles: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["detail"], str)
    for needle in needles:
        assert needle in body["detail"], body
    return body


def test_no_file_and_empty_file_are_422(client):
    assert_error(client.post("/predict"), 422, "no file uploaded")
    r = client.post("/predict", files={"image": ("x.png", png_bytes())})
    assert_error(r, 422, "no file uploaded", "'image'")
    r = client.post("/predict", data={"files": ""}, files={"other": ("", b"")})
    assert_error(r, 422, "no file uploaded")
    body = assert_error(post_files(client, ("empty.jpg", b"")), 422, "'empty.jpg'", "empty")
    assert body["filename"] == "empty.jpg" and body["reason"] == "empty"


def test_not_an_image_truncated_and_corrupt(client):
    jpeg, png = jpeg_bytes(), png_bytes()
    body = assert_error(post_files(client, ("notes.txt", b"just some text\n" * 50)), 415, "'notes.txt'",
                        "not a supported image")
    assert body["filename"] == "notes.txt"
    assert_error(post_files(client, ("cut.jpg", jpeg[: len(jpeg) // 2])), 400, "'cut.jpg'", "truncated")
    assert_error(post_files(client, ("cut.png", png[: len(png) // 3])), 400, "'cut.png'", "truncated")
    broken = bytearray(png)
    broken[100:300] = b"\xff" * 200
    r = post_files(client, ("broken.png", bytes(broken)))
    assert_error(r, 400, "'broken.png'", "corrupt or truncated")


def test_one_bad_file_fails_the_batch_naming_it(client):
    jpeg = jpeg_bytes()
    r = post_files(client, ("good1.png", png_bytes()), ("bad.jpg", jpeg[: len(jpeg) // 2]),
                   ("good2.png", png_bytes(seed=1)), ("notes.txt", b"text"))
    body = assert_error(r, 400, "'bad.jpg'", "truncated")  # the first bad file in upload order
    assert body["filename"] == "bad.jpg"


def test_too_many_bytes_too_many_files_and_bombs_are_413(client):
    body = assert_error(post_files(client, ("big.jpg", b"\xff\xd8" + bytes(2_100_000))), 413, "'big.jpg'",
                        "2,000,000 bytes")
    assert body["filename"] == "big.jpg" and body["reason"] == "too_large"
    files = [(f"img{i}.png", png_bytes(64, 64, seed=i)) for i in range(5)]
    assert_error(post_files(client, *files), 413, "too many files", "at most 4", "'img4.png'")
    bomb = io.BytesIO()
    Image.new("1", (10_000, 6_000)).save(bomb, "PNG")  # 60 M pixels in a few kB
    assert_error(post_files(client, ("bomb.png", bomb.getvalue())), 413, "'bomb.png'", "pixels")


def test_top_k_and_crops_out_of_range_are_422(client):
    img = ("a.png", png_bytes())
    assert_error(post_files(client, img, top_k=0), 422, "top_k")
    assert_error(post_files(client, img, top_k=11), 422, "top_k", "between 1 and 10")
    assert_error(post_files(client, img, top_k="five"), 422, "top_k")
    body = assert_error(post_files(client, img, crops="seven"), 422, "crops", "'ten' or 'center'")
    assert body["errors"][0]["loc"] == ["query", "crops"]


def test_malformed_bodies(client):
    r = client.post("/predict", content=b'{"files": []}', headers={"content-type": "application/json"})
    assert_error(r, 415, "multipart/form-data")
    r = client.post("/predict", content=b"--xyz\r\nnonsense", headers={"content-type": "multipart/form-data"})
    assert_error(r, 400, "boundary")
    r = client.post("/predict", content=b"not a multipart body at all",
                    headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert_error(r, 400, "malformed multipart")
    unfinished = (b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
                  + png_bytes()[:500])
    r = client.post("/predict", content=unfinished, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert_error(r, 400, "closing boundary")


def test_unknown_routes_and_methods_are_json(client):
    assert_error(client.get("/nope"), 404, "Not Found")
    assert_error(client.get("/predict"), 405, "Method Not Allowed")
    assert client.get("/health/live").json() == {"status": "alive"}


# -- limits enforced while the body streams in (raw ASGI, counting what the app read) --------------------
def _endless_file(name: str, chunk: int = 64 * 1024, count: int = 10_000):
    yield (f'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
           "Content-Type: image/jpeg\r\n\r\n").encode()
    for _ in range(count):  # 640 MB if read to the end
        yield b"\x42" * chunk


def test_limits_are_enforced_while_reading(exported, loaded_model):
    root, _, _ = exported

    async def scenario():
        app = create_app(settings_for(root), loader=reuse(loaded_model))
        await app.state.service.start()
        multipart = {"content-type": "multipart/form-data; boundary=b0undary"}
        # a file growing past max_file_bytes (2 MB): cut off right there, not at the end of the body
        status, body, consumed = await asgi_post(app, multipart, _endless_file("huge.jpg"))
        assert status == 413 and "'huge.jpg'" in body["detail"]
        assert consumed < 2_000_000 + 200_000
        # a declared Content-Length above max_request_bytes: refused before a byte is read
        status, body, consumed = await asgi_post(app, {**multipart, "content-length": str(10**9)},
                                                  _endless_file("x.jpg"))
        assert status == 413 and "larger than the limit" in body["detail"] and consumed == 0
        # no Content-Length (chunked), many small files: cut off at max_request_bytes (6 MB)
        def many_parts():
            for i in range(1000):
                yield (f'--b0undary\r\nContent-Disposition: form-data; name="other"; filename="f{i}"\r\n\r\n'
                       ).encode() + b"\x00" * 100_000 + b"\r\n"
        status, body, consumed = await asgi_post(app, multipart, many_parts())
        assert status == 413 and "request body is larger" in body["detail"]
        assert consumed < 6_000_000 + 200_000
        await app.state.service.stop()

    asyncio.run(scenario())


# -- readiness, load failures, the runner seam ---------------------------------------------------------
def test_503_until_ready(exported, loaded_model):
    root, _, _ = exported
    gate = threading.Event()
    app = create_app(settings_for(root, retry_after_seconds=2), loader=reuse(loaded_model, gate))
    with TestClient(app) as c:
        assert c.get("/health/live").status_code == 200
        r = c.get("/health/ready")
        assert_error(r, 503, "loading")
        assert r.headers["retry-after"] == "2"
        r = post_files(c, ("a.png", png_bytes()))
        assert_error(r, 503, "loading")
        assert r.headers["retry-after"] == "2"
        (model,) = c.get("/v1/models").json()["models"]
        assert model["ready"] is False and model["provider"] is None and model["state"] == "LOADING"
        gate.set()
        wait_ready(c, timeout=10)
        assert post_files(c, ("a.png", png_bytes())).status_code == 200


def test_failed_load_is_reported_not_hidden(exported, tmp_path):
    """A version whose model.onnx changed after export: the app's own load path finds the sha256 mismatch."""
    root, version, _ = exported
    broken = tmp_path / "store"
    shutil.copytree(root, broken)
    onnx_file = broken / "testnet" / "1" / version.metadata.onnx.file
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    onnx_file.write_bytes(bytes(data))
    with TestClient(create_app(settings_for(broken, repository_poll_seconds=0))) as c:
        for _ in range(200):
            if c.app.state.service.repository.started:
                break
            time.sleep(0.02)
        body = assert_error(c.get("/health/ready"), 503, "no loadable version", "sha256", "does not match")
        assert str(tmp_path) not in body["detail"]  # no server paths in answers
        assert_error(c.get("/health/live"), 503, "nothing can be served")
        assert_error(post_files(c, ("a.png", png_bytes())), 503, "no loadable version")
        (entry,) = c.get("/v1/models").json()["models"]
        assert entry["state"] == "UNAVAILABLE" and "sha256" in entry["reason"] and str(tmp_path) not in entry["reason"]
    (tmp_path / "empty").mkdir()
    with TestClient(create_app(settings_for(tmp_path / "empty"))) as c:
        for _ in range(200):
            if c.app.state.service.repository.started:
                break
            time.sleep(0.02)
        assert_error(c.get("/health/ready"), 503, "holds 0 models")
        assert c.get("/v1/models").json() == {"models": []}


class OverloadedRunner(InferenceRunner):
    async def infer(self, patches):
        raise Overloaded("the model is busy; retry shortly", retry_after=3, reason="overloaded")


def test_runner_seam_and_overload_503(exported, loaded_model):
    root, _, _ = exported
    app = create_app(settings_for(root), loader=reuse(loaded_model),
                     runner_factory=lambda m, metrics, s: OverloadedRunner())
    with TestClient(app) as c:
        wait_ready(c, timeout=10)
        r = post_files(c, ("a.png", png_bytes()))
        assert_error(r, 503, "busy")
        assert r.headers["retry-after"] == "3"


def test_thread_runner_bounds_its_queue():
    from service.metrics import Metrics
    from service.model import RuntimeOptions

    class Slow:
        instances = ()
        runtime = RuntimeOptions()

        def predict(self, patches, *, release_memory=False, instance=None):
            time.sleep(0.3)
            return np.zeros((len(patches), 10), np.float32)

    async def scenario():
        runner = ThreadRunner(Slow(), Metrics(), concurrency=1, adaptive=False, max_queued=1, retry_after=1)
        x = np.zeros((1, 224, 224, 3), np.uint8)
        results = await asyncio.gather(*(runner.infer(x) for _ in range(3)), return_exceptions=True)
        assert sum(isinstance(r, np.ndarray) for r in results) == 2
        assert sum(isinstance(r, Overloaded) for r in results) == 1

    asyncio.run(scenario())


# -- models, metrics, docs ----------------------------------------------------------------------------------
def test_models_endpoint_reports_metadata_and_actual_provider(client, exported):
    _, version, _ = exported
    body = client.get("/v1/models").json()
    (m,) = body["models"]
    assert (m["name"], m["version"], m["ready"], m["num_classes"]) == ("testnet", version.version, True, 10)
    assert (m["state"], m["default"], m["path"]) == ("READY", True, "testnet/1")
    session = client.app.state.service.repository.served["testnet"][1].model.session
    assert m["provider"] == "CPUExecutionProvider" == session.get_providers()[0]
    assert m["requested_providers"] == ["CPUExecutionProvider"]
    assert m["metadata"]["preprocessing"]["crop_size"] == 224
    assert [lab["name"] for lab in m["metadata"]["labels"]][:2] == ["zero", "one"]
    assert m["memory_bytes"] > 0 and m["load_seconds"] > 0
    assert client.get("/v1/models/testnet").json()["version"] == version.version
    assert client.get("/v1/models/testnet/versions/1").json()["state"] == "READY"
    assert_error(client.get("/v1/models/other"), 404, "no model named 'other'")
    assert_error(client.get("/v1/models/testnet/versions/7"), 404, "has no version 7")


def test_metrics_count_requests_images_and_inference(client):
    def value(text: str, line_start: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(line_start)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    before = client.get("/metrics").text
    assert client.post("/predict", files=[("files", ("a.png", png_bytes())),
                                          ("files", ("b.png", png_bytes(seed=1)))]).status_code == 200
    assert post_files(client, ("t.txt", b"text")).status_code == 415
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    after = r.text
    ok = 'alexnet_http_requests_total{method="POST",route="/predict",status="200"}'
    assert value(after, ok) == value(before, ok) + 1
    bad = 'alexnet_http_requests_total{method="POST",route="/predict",status="415"}'
    assert value(after, bad) == value(before, bad) + 1
    assert value(after, 'alexnet_images_processed_total{crops="ten"}') == \
        value(before, 'alexnet_images_processed_total{crops="ten"}') + 2
    rejected = 'alexnet_images_rejected_total{reason="unsupported"}'
    assert value(after, rejected) == value(before, rejected) + 1
    runs = "alexnet_inference_duration_seconds_count"
    assert value(after, runs) == value(before, runs) + 1  # two images, one model run
    bucket = 'alexnet_inference_batch_patches_bucket{le="20.0"}'  # of 20 patches
    assert value(after, bucket) == value(before, bucket) + 1
    assert value(after, "alexnet_request_images_sum") == value(before, "alexnet_request_images_sum") + 3  # 2 + 1
    steps = 'alexnet_pipeline_step_seconds_count{model="testnet",step="predict"}'
    assert value(after, steps) == value(before, steps) + 1
    assert 'alexnet_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/metrics"}' in after
    assert 'alexnet_model_ready{model="testnet",provider="CPUExecutionProvider",version="1"} 1.0' in after


def test_openapi_documents_the_upload_and_examples(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/predict"]["post"]
    schema = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["files"]["type"] == "array"
    assert {p["name"] for p in op["parameters"] if p["in"] == "query"} >= {"top_k", "crops", "model", "version",
                                                                          "details", "square"}
    assert {p["name"] for p in op["parameters"] if p["in"] == "header"} == {"X-Request-ID"}  # issue 22
    assert "example" in op["responses"]["200"]["content"]["application/json"]
    assert {"400", "413", "415", "422", "503"} <= set(op["responses"])
    assert {"/health/live", "/health/ready", "/v1/models", "/metrics"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200
