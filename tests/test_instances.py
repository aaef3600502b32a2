"""Instance groups (issue 23): N sessions × T threads per version, and the adaptive runner that gives a lone batch
every core and spreads load over the instances. A real exported model, real ONNX Runtime sessions."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from support.settings import cpu_settings

from service.batching import BatchingRunner
from service.metrics import Metrics
from service.model import CPU, ClassifierModel, RuntimeOptions
from service.runner import ThreadRunner
from service.session import physical_cores


@pytest.fixture(scope="module")
def grouped(exported):
    """The exported model with an instance group of two one-thread sessions beside its all-cores session."""
    _, version, _ = exported
    model = ClassifierModel(version, providers=[CPU], runtime=RuntimeOptions(instances=2, instance_threads=1))
    model.load(warmup_batch=1)
    yield model
    model.close()


class Timeline:
    """Wraps the model, recording when each run started and ended and on which session (None: the main one)."""

    def __init__(self, model: ClassifierModel) -> None:
        self.model, self.metadata, self.runtime, self.instances = model, model.metadata, model.runtime, model.instances
        self.runs: list[tuple[float, float, int | None]] = []
        self._lock = threading.Lock()

    def predict(self, patches, *, release_memory=False, instance=None):
        start = time.perf_counter()
        out = self.model.predict(patches, release_memory=release_memory, instance=instance)
        with self._lock:
            self.runs.append((start, time.perf_counter(), instance))
        return out

    def overlaps(self):
        """Pairs of runs that were in flight at the same time."""
        return [(a, b) for i, a in enumerate(self.runs) for b in self.runs[i + 1:] if a[0] < b[1] and b[0] < a[1]]


def patches(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), np.uint8)


def test_every_instance_gives_the_probabilities_of_the_one_session(grouped, loaded_model):
    x = patches(10, 0)
    expected = loaded_model.predict(x)  # the suite's one plain session of the same version
    assert len(grouped.instances) == 2
    for instance in (None, 0, 1):
        np.testing.assert_allclose(grouped.predict(x, instance=instance), expected, rtol=1e-4, atol=1e-6)


def test_load_spreads_over_the_instances_and_never_oversubscribes(grouped, loaded_model):
    """Sixteen requests of ten patches at once, batches of at most 20: several batches wait, so they go to the two
    one-thread instances side by side; the all-cores session never runs beside another run; every request gets
    the rows the plain session gives."""
    timeline, metrics = Timeline(grouped), Metrics()
    inputs = [patches(10, seed) for seed in range(16)]

    async def scenario():
        runner = BatchingRunner(timeline, metrics, max_batch=20, max_delay=0, max_queued=0, concurrency=1,
                                adaptive=True, retry_after=1)
        await runner.start()
        try:
            return await asyncio.gather(*(runner.infer(x) for x in inputs)), runner.instances.peak_threads
        finally:
            await runner.stop()

    results, peak = asyncio.run(scenario())
    for x, got in zip(inputs, results, strict=True):
        np.testing.assert_allclose(got, loaded_model.predict(x), rtol=1e-4, atol=1e-6)
    used = {instance for _, _, instance in timeline.runs}
    assert {0, 1} <= used, timeline.runs
    overlapping = timeline.overlaps()
    assert overlapping, "the two instances never ran at the same time"
    assert all(a[2] is not None and b[2] is not None and a[2] != b[2] for a, b in overlapping), overlapping
    assert peak <= physical_cores()


@pytest.mark.parametrize("batching", [True, False])
def test_a_lone_request_runs_on_the_all_cores_session(grouped, batching):
    timeline, metrics = Timeline(grouped), Metrics()

    async def scenario():
        if batching:
            runner = BatchingRunner(timeline, metrics, max_batch=80, max_delay=0, max_queued=0, concurrency=1,
                                    adaptive=True, retry_after=1)
        else:
            runner = ThreadRunner(timeline, metrics, concurrency=1, adaptive=True, max_queued=0, retry_after=1)
        await runner.start()
        try:
            for seed in range(3):  # one after the other: each is alone
                await runner.infer(patches(10, seed))
        finally:
            await runner.stop()

    asyncio.run(scenario())
    assert [instance for _, _, instance in timeline.runs] == [None, None, None]
    runs = {s.labels["session"]: s.value for f in metrics.inference_runs.collect() for s in f.samples
            if s.name.endswith("_total")}
    assert runs == {"main": 3.0}


def test_without_adaptive_every_run_goes_to_an_instance(grouped):
    timeline = Timeline(grouped)

    async def scenario():
        runner = BatchingRunner(timeline, Metrics(), max_batch=80, max_delay=0, max_queued=0, concurrency=1,
                                adaptive=False, retry_after=1)
        await runner.start()
        try:
            await runner.infer(patches(10, 0))
        finally:
            await runner.stop()

    asyncio.run(scenario())
    assert [instance for _, _, instance in timeline.runs] in ([0], [1])


def test_settings_size_the_group_by_the_cores(tmp_path):
    cores = physical_cores()
    auto = cpu_settings(tmp_path, instances="auto")
    assert auto.effective_instances() == cores and auto.effective_instance_threads() == (1 if cores > 1 else 0)
    assert cpu_settings(tmp_path).effective_instance_threads() == 0  # the default: no group
    two = cpu_settings(tmp_path, instances="2", workers=1)
    if cores >= 2:
        assert two.effective_instance_threads() == cores // 2
    with pytest.raises(ValueError, match=r"more than the \d+ physical cores"):
        cpu_settings(tmp_path, instances=str(cores + 1), instance_threads=1).check_instances()
    with pytest.raises(ValueError, match="INFERENCE_CONCURRENCY"):
        cpu_settings(tmp_path, instances="2", instance_threads=1, inference_concurrency=2).check_instances()
    with pytest.raises(ValueError, match="instances"):
        cpu_settings(tmp_path, instances="zero")


def test_alexnet_serve_refuses_more_threads_than_cores(exported, tmp_path):
    import os
    import subprocess
    import sys

    root, _, _ = exported
    env = {**os.environ, "ALEXNET_INSTANCES": str(physical_cores() + 1), "ALEXNET_INSTANCE_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "service.cli", "--model-store", str(root)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "physical cores" in result.stderr
