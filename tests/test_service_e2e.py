"""End to end: a real `alexnet-serve` process (uvicorn) on a free port, against the exported store."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from support.gpu import cuda_provider_works
from support.images import files, image
from support.paths import SKLEARN_IMAGES
from support.server import Server, start_server, stop_server


@pytest.fixture
def server(shared_server: Server) -> Server:
    """The session's read-only server (conftest.py `shared_server`: providers auto, start_server's limits), which
    test_page and test_deploy's kserve smoke use too; stopped by SIGTERM at the end of the session, its exit status
    checked there. Tests that need other settings (workers, drain) start their own below."""
    return shared_server


def test_serves_predict_models_and_health(server):
    assert "200" in server.statuses_before_ready[-1]
    assert set(server.statuses_before_ready) <= {"refused", "503", "200"}
    photos = [(n, (SKLEARN_IMAGES / n).read_bytes()) for n in ("china.jpg", "flower.jpg")]
    with server.client() as c:
        assert c.get("/health/live").json() == {"status": "alive"}
        ready = c.get("/health/ready").json()
        r = c.post("/predict", files=files(*photos, ("g.png", image("PNG")), ("w.webp", image("WEBP"))))
        assert r.status_code == 200, r.text
        body = r.json()
        (served,) = ready["models"]
        assert body["model"] == {"name": served["name"], "version": served["version"]} == {"name": "testnet",
                                                                                           "version": 1}
        assert [x["filename"] for x in body["results"]] == ["china.jpg", "flower.jpg", "g.png", "w.webp"]
        for result in body["results"]:
            probs = [p["probability"] for p in result["predictions"]]
            assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        single = c.post("/predict", params={"crops": "center", "top_k": 2},
                        files={"file": ("one.jpg", photos[0][1], "image/jpeg")}).json()
        assert single["crops"] == "center" and len(single["results"][0]["predictions"]) == 2

        (model,) = c.get("/v1/models").json()["models"]
        assert model["ready"] and model["num_classes"] == 10 and model["default"]
        # the provider the session really runs on: CUDA only where it truly works, whatever ORT lists
        expected = "CUDAExecutionProvider" if cuda_provider_works() else "CPUExecutionProvider"
        assert model["provider"] == served["provider"] == body["provider"] == expected
        assert c.get("/docs").status_code == 200


def test_bad_inputs_then_still_healthy(server):
    jpeg = image("JPEG")
    bomb = io.BytesIO()
    Image.new("1", (10_000, 6_000)).save(bomb, "PNG")
    cases = [
        ({"files": files(("empty.jpg", b""))}, 422, "'empty.jpg'"),
        ({}, 422, "no file"),
        ({"files": files(("notes.txt", b"plain text, not an image\n" * 10))}, 415, "'notes.txt'"),
        ({"files": files(("cut.jpg", jpeg[: len(jpeg) // 2]))}, 400, "'cut.jpg'"),
        ({"files": files(("huge.jpg", b"\xff\xd8" + os.urandom(4_000_000)))}, 413, "'huge.jpg'"),
        ({"files": files(("bomb.png", bomb.getvalue()))}, 413, "'bomb.png'"),
        ({"files": files(*[(f"{i}.png", image("PNG", 32, 32, seed=i)) for i in range(11)])}, 413, "'10.png'"),
        ({"files": files(("a.png", image("PNG"))), "params": {"top_k": 0}}, 422, "top_k"),
        ({"files": files(("a.png", image("PNG"))), "params": {"top_k": 11}}, 422, "top_k"),
        ({"files": files(("a.png", image("PNG"))), "params": {"crops": "five"}}, 422, "crops"),
        ({"files": files(("ok.png", image("PNG")), ("bad.jpg", jpeg[:100]))}, 400, "'bad.jpg'"),
    ]
    with server.client() as c:
        for kwargs, status, needle in cases:
            r = c.post("/predict", **kwargs)
            assert r.status_code == status, (needle, r.status_code, r.text)
            assert needle in r.json()["detail"], r.text
        assert c.get("/health/ready").status_code == 200
        assert c.post("/predict", files=files(("after.png", image("PNG")))).status_code == 200
    assert server.process.poll() is None
    assert "Traceback" not in server.log.read_text()


def test_metrics_counters_move(server):
    def value(text: str, prefix: str) -> float:
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))

    with server.client() as c:
        before = c.get("/metrics").text
        assert c.post("/predict", files=files(("a.png", image("PNG")), ("b.png", image("PNG", seed=1)))).is_success
        assert c.post("/predict", files=files(("t.txt", b"text"))).status_code == 415
        after = c.get("/metrics").text
    ok = 'alexnet_http_requests_total{method="POST",route="/predict",status="200"}'
    assert value(after, ok) == value(before, ok) + 1
    bad = 'alexnet_http_requests_total{method="POST",route="/predict",status="415"}'
    assert value(after, bad) == value(before, bad) + 1
    assert value(after, "alexnet_images_processed_total") == value(before, "alexnet_images_processed_total") + 2
    assert value(after, "alexnet_inference_duration_seconds_count") == \
        value(before, "alexnet_inference_duration_seconds_count") + 1
    assert value(after, "alexnet_http_request_duration_seconds_count") > \
        value(before, "alexnet_http_request_duration_seconds_count")


def test_concurrent_requests_match_sequential_and_health_stays_fast(server):
    imgs = [(f"img{i}.{fmt.lower()}", image(fmt, 300 + 7 * i, 260, seed=i))
            for i, fmt in enumerate(["PNG", "JPEG", "WEBP", "BMP", "PNG", "JPEG"])]
    with server.client() as c:
        sequential = {name: c.post("/predict", files=files((name, data))).json()["results"][0]["predictions"]
                      for name, data in imgs}

    def batch(i: int) -> list[dict]:
        chosen = [imgs[(i + j) % len(imgs)] for j in range(1 + i % 3)]
        with server.client() as c:
            r = c.post("/predict", files=files(*chosen))
            assert r.status_code == 200, r.text
            return r.json()["results"]

    health_latency: list[float] = []
    busy = threading.Event()

    def probe():
        with server.client() as c:
            while busy.is_set():
                start = time.perf_counter()
                assert c.get("/health/live").status_code == 200
                health_latency.append(time.perf_counter() - start)
                time.sleep(0.05)

    busy.set()
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(batch, range(10)))
    finally:
        busy.clear()
        prober.join()
    for results in answers:
        for result in results:
            want = sequential[result["filename"]]
            assert [p["index"] for p in result["predictions"]] == [p["index"] for p in want]
            assert np.allclose([p["probability"] for p in result["predictions"]],
                               [p["probability"] for p in want], atol=1e-5)
    assert len(health_latency) >= 3
    assert np.median(health_latency) < 0.5, health_latency  # answered on the event loop, not queued behind work


def test_all_imagenet_samples_return_five_predictions(server, sample_images):
    assert len(sample_images) == 100

    def post(chunk: list[Path]) -> list[dict]:
        with server.client() as c:
            r = c.post("/predict", files=files(*[(p.name, p.read_bytes()) for p in chunk]))
            assert r.status_code == 200, (chunk, r.text)
            return r.json()["results"]

    chunks = [sample_images[i:i + 10] for i in range(0, len(sample_images), 10)]
    with ThreadPoolExecutor(2) as pool:
        results = [res for chunk in pool.map(post, chunks) for res in chunk]
    assert [r["filename"] for r in results] == [p.name for p in sample_images]
    assert all(len(r["predictions"]) == 5 for r in results)


def test_several_workers_share_metrics(exported, tmp_path):
    """--workers 2: two processes, each with its own session; /metrics adds both up (multiprocess mode)."""
    root, _, _ = exported
    metrics_dir = tmp_path / "metrics"
    srv = start_server(root, tmp_path / "serve.log", "--workers", "2", "--providers", "CPUExecutionProvider",
                       env={"ALEXNET_WARMUP_BATCH": "1", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        deadline = time.monotonic() + 60
        answered = []
        while (answered.count(200) < 4 or len(_predicts_by_worker(metrics_dir)) < 2) and time.monotonic() < deadline:
            with srv.client() as fresh:  # new connections: the kernel spreads them over the workers
                r = fresh.post("/predict", params={"crops": "center"}, files=files(("a.png", image("PNG"))))
                answered.append(r.status_code)  # 503 from a worker still loading its model
        by_worker = _predicts_by_worker(metrics_dir)
        assert len(by_worker) == 2 and all(n >= 1 for n in by_worker.values()), by_worker  # both workers served
        assert set(answered) <= {200, 503} and answered.count(200) == sum(by_worker.values()), answered
        with srv.client() as c:
            text = c.get("/metrics").text
        line = 'alexnet_http_requests_total{method="POST",route="/predict",status="200"}'
        total = float(answered.count(200))
        assert any(ln.startswith(line) and float(ln.rsplit(" ", 1)[1]) == total for ln in text.splitlines()), text
        assert "alexnet_images_processed_total" in text
    finally:
        stop_server(srv)


def test_sigterm_drains_the_requests_in_flight(exported, tmp_path):
    """SIGTERM while 24 requests are in flight: every one of them gets its 200, then the process exits within the
    drain timeout (ALEXNET_DRAIN_SECONDS) — no request that was accepted is cut off."""
    root, _, _ = exported
    # The drain timeout is a margin, not the measurement: the 24 × 4 ten-crop images take ~15 s on an idle 2-core
    # machine, and twice that when the machine is shared, so 60 s (3× the 20 s this test used) holds on a loaded
    # one; the check stays that every answer is a 200 and the process exits before the timeout.
    drain = 60
    photos = [(n, (SKLEARN_IMAGES / n).read_bytes()) for n in ("china.jpg", "flower.jpg")] * 2
    # admission's default bound follows the machine's memory (61 images on 24 GiB): this test is about draining,
    # so it admits exactly the 24 × 4 images it sends, whatever the machine
    srv = start_server(root, tmp_path / "serve.log", "--providers", "CPUExecutionProvider",
                       env={"ALEXNET_DRAIN_SECONDS": str(drain), "ALEXNET_WARMUP_BATCH": "1",
                            "ALEXNET_MAX_INFLIGHT_IMAGES": str(24 * len(photos))})

    def post(_: int) -> int:
        with srv.client() as c:
            return c.post("/predict", files=files(*photos)).status_code

    def in_flight() -> float:
        text = httpx.get(f"{srv.url}/metrics", timeout=10).text
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln.startswith("alexnet_http_requests_in_flight"))

    with ThreadPoolExecutor(24) as pool:
        answers = [pool.submit(post, i) for i in range(24)]
        deadline = time.monotonic() + 60
        while in_flight() < 24 + 1:  # + the /metrics request itself
            assert time.monotonic() < deadline, "the requests never got in flight together"
            time.sleep(0.05)
        srv.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        statuses = [a.result(timeout=120) for a in answers]
    code = srv.process.wait(timeout=drain + 30)
    assert statuses == [200] * 24
    assert code in (0, -signal.SIGTERM) and time.monotonic() - signalled < drain, srv.log.read_text()
    assert "Traceback" not in srv.log.read_text()


def _predicts_by_worker(metrics_dir: Path) -> dict[str, float]:
    """Successful /predict answers per worker process, read from each worker's own prometheus-client file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for db in metrics_dir.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(db)], accumulate=False):
            for sample in metric.samples:
                if (sample.name == "alexnet_http_requests_total" and sample.labels.get("route") == "/predict"
                        and sample.labels.get("status") == "200" and sample.value):
                    counts[db.stem] = counts.get(db.stem, 0.0) + sample.value
    return counts
