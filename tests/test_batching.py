"""The dynamic batcher (service/batching.py) with the real exported model: rows, limits, delay, overload, shutdown."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from support.app import reuse
from support.settings import cpu_settings

from service.app import create_app
from service.batching import BatchingRunner
from service.errors import Overloaded, ServiceUnavailable
from service.metrics import Metrics
from service.model import ClassifierModel
from service.settings import Settings

with warnings.catch_warnings():  # starlette asks for httpx2 in the test client; httpx is what is installed
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


class RecordingModel:
    """The real loaded model, recording the batch of every run; `gate` (when given) holds runs until set."""

    def __init__(self, model: ClassifierModel, gate: threading.Event | None = None) -> None:
        self.model = model
        self.metadata = model.metadata
        self.runtime = model.runtime
        self.instances = model.instances
        self.batches: list[int] = []
        self.gate = gate
        self.entered = threading.Event()

    def predict(self, patches: np.ndarray, *, release_memory: bool = False, instance: int | None = None) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        self.batches.append(len(patches))
        return self.model.predict(patches, release_memory=release_memory, instance=instance)




def random_patches(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), np.uint8)


def histogram(metric) -> tuple[float, float]:
    """(sum, count) of an unlabelled prometheus Histogram."""
    samples = {s.name: s.value for family in metric.collect() for s in family.samples}
    return next(v for k, v in samples.items() if k.endswith("_sum")), \
        next(v for k, v in samples.items() if k.endswith("_count"))


async def started(runner: BatchingRunner) -> BatchingRunner:
    await runner.start()
    return runner


def test_rows_go_back_to_their_request_and_max_batch_holds(loaded_model):
    """Concurrent requests of different sizes (one larger than max_batch) get exactly the sequential answers."""
    sizes = [1, 10, 3, 10, 1, 25, 7, 10]
    inputs = [random_patches(n, seed) for seed, n in enumerate(sizes)]
    expected = [loaded_model.predict(x) for x in inputs]
    recorder = RecordingModel(loaded_model)
    metrics = Metrics()

    async def scenario():
        runner = await started(BatchingRunner(recorder, metrics, max_batch=16, max_delay=0.2, max_queued=0,
                                              concurrency=1, adaptive=False, retry_after=1))
        try:
            return await asyncio.gather(*(runner.infer(x) for x in inputs))
        finally:
            await runner.stop()

    results = asyncio.run(scenario())
    for got, want in zip(results, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert max(recorder.batches) <= 16
    assert sum(recorder.batches) == sum(sizes)
    assert len(recorder.batches) < len(sizes) + 1  # requests were merged (25 is split in two chunks)
    total, runs = histogram(metrics.batch_requests)
    assert runs == len(recorder.batches) and total > runs


def test_max_delay_flushes_a_lone_request(loaded_model):
    x = random_patches(1, 42)
    recorder = RecordingModel(loaded_model)
    metrics = Metrics()

    async def scenario():
        runner = await started(BatchingRunner(recorder, metrics, max_batch=1000, max_delay=0.05, max_queued=0,
                                              concurrency=1, adaptive=False, retry_after=1))
        try:
            return await asyncio.wait_for(runner.infer(x), 30)
        finally:
            await runner.stop()

    np.testing.assert_allclose(asyncio.run(scenario()), loaded_model.predict(x), rtol=1e-4, atol=1e-6)
    assert recorder.batches == [1]
    waited, count = histogram(metrics.queue_wait)
    assert count == 1 and waited >= 0.05  # it was held for the others that never came, then went alone


def test_full_queue_overloads_then_recovers_and_cancelled_requests_are_skipped(loaded_model):
    gate = threading.Event()
    recorder = RecordingModel(loaded_model, gate)
    xs = [random_patches(2, seed) for seed in range(4)]

    async def scenario():
        runner = await started(BatchingRunner(recorder, Metrics(), max_batch=4, max_delay=0, max_queued=2,
                                              concurrency=1, adaptive=False, retry_after=7))
        try:
            running = asyncio.create_task(runner.infer(xs[0]))
            while not recorder.entered.is_set():  # the first run holds the only slot
                await asyncio.sleep(0.01)
            queued = [asyncio.create_task(runner.infer(x)) for x in xs[1:3]]
            await asyncio.sleep(0.05)
            assert runner.waiting == 2
            with pytest.raises(Overloaded) as info:
                await runner.infer(xs[3])
            assert info.value.headers["Retry-After"] == "7" and info.value.status == 503
            queued[1].cancel()  # a client that went away: its patches never reach the model
            await asyncio.sleep(0.05)
            gate.set()
            first, second = await running, await queued[0]
            assert runner.waiting == 0
            return first, second, await runner.infer(xs[3])  # serving again
        finally:
            gate.set()
            await runner.stop()

    first, second, again = asyncio.run(scenario())
    for got, x in ((first, xs[0]), (second, xs[1]), (again, xs[3])):
        np.testing.assert_allclose(got, loaded_model.predict(x), rtol=1e-4, atol=1e-6)
    assert recorder.batches == [2, 2, 2]


def test_shutdown_fails_queued_requests_and_finishes_the_running_batch(loaded_model):
    gate = threading.Event()
    recorder = RecordingModel(loaded_model, gate)
    xs = [random_patches(1, seed) for seed in range(3)]

    async def scenario():
        runner = await started(BatchingRunner(recorder, Metrics(), max_batch=1, max_delay=0, max_queued=0,
                                              concurrency=1, adaptive=False, retry_after=1))
        running = asyncio.create_task(runner.infer(xs[0]))
        while not recorder.entered.is_set():
            await asyncio.sleep(0.01)
        queued = [asyncio.create_task(runner.infer(x)) for x in xs[1:]]
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(runner.stop())
        outcomes = await asyncio.gather(*queued, return_exceptions=True)
        assert not stopping.done()  # it waits for the batch on the model
        gate.set()
        await stopping
        with pytest.raises(ServiceUnavailable):
            await runner.infer(xs[0])
        return await running, outcomes

    first, outcomes = asyncio.run(scenario())
    np.testing.assert_allclose(first, loaded_model.predict(xs[0]), rtol=1e-4, atol=1e-6)
    for outcome in outcomes:
        assert isinstance(outcome, ServiceUnavailable) and outcome.extra["reason"] == "shutting_down"
    assert recorder.batches == [1]


# -- through the app: mixed crops in one batch, 503 over HTTP -----------------------------------------------
def jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), np.uint8))
    buf = io.BytesIO()
    small.resize((width, height), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def settings_for(root, **overrides) -> Settings:
    return cpu_settings(root, **{"warmup_batch": 1, **overrides})


def wait_ready(client: TestClient) -> None:
    for _ in range(600):
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(client.get("/health/ready").json())


def post(client: TestClient, data: bytes, crops: str) -> dict:
    r = client.post("/predict", params={"crops": crops, "top_k": 10}, files={"file": ("x.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    return {p["index"]: p["probability"] for p in r.json()["results"][0]["predictions"]}


def test_mixed_ten_and_center_requests_share_a_batch_and_keep_their_answers(exported):
    root, _, _ = exported
    requests = [(jpeg(w, h, seed), crops) for seed, (w, h, crops) in enumerate(
        [(320, 240, "ten"), (240, 320, "center"), (500, 375, "ten"), (256, 256, "center"), (180, 120, "ten"),
         (640, 480, "center")])]
    app = create_app(settings_for(root, max_batch_delay_ms=150, max_batch_patches=64))
    with TestClient(app) as c:
        wait_ready(c)
        sequential = [post(c, data, crops) for data, crops in requests]
        with ThreadPoolExecutor(len(requests)) as pool:
            concurrent = list(pool.map(lambda rc: post(c, *rc), requests))
        total, runs = histogram(app.state.service.metrics.batch_requests)
    for got, want in zip(concurrent, sequential, strict=True):
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-4, atol=1e-6)
    assert total == 2 * len(requests) and runs < total  # the concurrent ones went through the model together


def test_full_queue_is_503_with_retry_after_and_the_service_keeps_serving(exported, loaded_model):
    root, _, _ = exported
    gate = threading.Event()
    recorder = RecordingModel(loaded_model, gate)
    settings = settings_for(root, max_queued_inferences=1, retry_after_seconds=4, max_batch_patches=10,
                            max_batch_delay_ms=0)
    app = create_app(settings, loader=reuse(loaded_model),
                     runner_factory=lambda m, metrics, s: BatchingRunner(recorder, metrics, max_batch=10, max_delay=0,
                                                                         max_queued=1, retry_after=4, concurrency=1,
                                                                         adaptive=False))
    data = jpeg(320, 240, 0)
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        wait_ready(c)
        try:
            running = pool.submit(post, c, data, "ten")
            assert recorder.entered.wait(30)
            queued = pool.submit(post, c, data, "center")
            runner = app.state.service.repository.served["testnet"][1].runner
            for _ in range(600):
                if runner.waiting == 1:
                    break
                time.sleep(0.01)
            r = c.post("/predict", files={"file": ("x.jpg", data, "image/jpeg")})
            assert r.status_code == 503 and r.headers["retry-after"] == "4"
            assert r.json()["reason"] == "overloaded"
        finally:
            gate.set()
        assert running.result(30) and queued.result(30)
        assert post(c, data, "ten")


def test_a_failed_run_fails_its_requests_and_the_runner_keeps_serving(loaded_model):
    class FailsSecondRun(RecordingModel):
        def predict(self, patches, *, release_memory=False, instance=None):
            if len(self.batches) == 1:
                self.batches.append(-1)
                raise RuntimeError("out of memory")
            return super().predict(patches, instance=instance)

    recorder = FailsSecondRun(loaded_model)
    big, small = random_patches(5, 1), random_patches(1, 2)

    async def scenario():
        runner = await started(BatchingRunner(recorder, Metrics(), max_batch=2, max_delay=0, max_queued=0,
                                              concurrency=1, adaptive=False, retry_after=1))
        try:
            with pytest.raises(RuntimeError, match="out of memory"):  # chunks [2, 2, 1]; the second run fails
                await runner.infer(big)
            result = await runner.infer(small)
            assert runner.waiting == 0
            return result
        finally:
            await runner.stop()

    np.testing.assert_allclose(asyncio.run(scenario()), loaded_model.predict(small), rtol=1e-4, atol=1e-6)
    assert recorder.batches[:2] == [2, -1] and recorder.batches[-1] == 1
