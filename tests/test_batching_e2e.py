"""Dynamic batching end to end: a real `alexnet-serve` (uvicorn) answers concurrent mixed requests correctly."""

from __future__ import annotations

import re
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from support.images import image
from support.server import start_server, stop_server


def answer(client: httpx.Client, data: bytes, name: str, crops: str) -> list[dict]:
    r = client.post("/predict", params={"crops": crops, "top_k": 10}, files={"files": (name, data, "image/*")})
    assert r.status_code == 200, r.text
    return r.json()["results"]


@pytest.mark.slow
def test_concurrent_mixed_requests_get_their_sequential_answers(exported, tmp_path):
    root, _, _ = exported
    requests = [(image(fmt, w, h, seed), f"{seed}.{fmt.lower()}", crops) for seed, (fmt, w, h, crops) in enumerate([
        ("JPEG", 320, 240, "ten"), ("PNG", 240, 320, "center"), ("JPEG", 800, 600, "ten"),
        ("JPEG", 256, 256, "center"), ("PNG", 150, 100, "ten"), ("JPEG", 640, 480, "center"),
        ("JPEG", 300, 900, "ten"), ("JPEG", 1000, 700, "ten")])]
    server = start_server(root, tmp_path / "serve.log",
                          env={"ALEXNET_MAX_BATCH_DELAY_MS": "250", "ALEXNET_MAX_BATCH_PATCHES": "40"})
    try:
        with server.client() as c:
            sequential = [answer(c, *req) for req in requests]
            with ThreadPoolExecutor(len(requests)) as pool:
                concurrent = list(pool.map(lambda req: answer(c, *req), requests))
            metrics = c.get("/metrics").text
    finally:
        assert stop_server(server) in (0, -signal.SIGTERM), server.log.read_text()
    for got, want in zip(concurrent, sequential, strict=True):
        assert got[0]["filename"] == want[0]["filename"]
        g = {p["index"]: p["probability"] for p in got[0]["predictions"]}
        w = {p["index"]: p["probability"] for p in want[0]["predictions"]}
        assert g.keys() == w.keys()
        np.testing.assert_allclose([g[k] for k in w], list(w.values()), rtol=1e-4, atol=1e-6)

    def value(name: str) -> float:
        return float(re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M).group(1))

    runs, merged = value("alexnet_inference_batch_requests_count"), value("alexnet_inference_batch_requests_sum")
    assert merged >= 2 * len(requests) and runs < merged  # concurrent requests shared runs
    assert value('alexnet_inference_batch_patches_bucket{le="40.0"}') == runs  # no run above the max batch
