"""The ONNX Runtime options the service opens its session with: thread spinning, CUDA provider options, fail-over."""

from __future__ import annotations

import numpy as np
import pytest
from support.gpu import cuda_provider_works
from support.settings import cpu_settings

from service.model import CPU, CUDA, ClassifierModel, RuntimeOptions
from service.settings import Settings


def test_settings_reach_the_session(exported):
    root, version, _ = exported
    settings = cpu_settings(root, intra_op_threads=1, intra_op_spinning=True, cudnn_conv_algo_search="DEFAULT",
                            warmup_batch=1)
    model = default_loader(settings)(version)
    assert model.runtime == RuntimeOptions(intra_op_threads=1, spinning=True, cudnn_conv_algo_search="DEFAULT")
    options = model.runtime.session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    default = Settings(_env_file=None)  # no spinning unless asked for (docs/benchmark.md)
    assert not default.intra_op_spinning and RuntimeOptions() == RuntimeOptions(spinning=default.intra_op_spinning)
    assert RuntimeOptions().session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_cuda_gets_its_options_and_cpu_none():
    providers = RuntimeOptions(cudnn_conv_algo_search="HEURISTIC").providers([CUDA, CPU])
    assert providers[0] == (CUDA, {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"})
    assert providers[1] == CPU


def test_auto_providers_fail_over_to_cpu_with_the_same_answers(exported):
    """'auto' asks for CUDA with its options where this onnxruntime has it; without a GPU the session is on CPU."""
    _, version, _ = exported
    auto = ClassifierModel(version)  # providers: auto
    cpu = ClassifierModel(version, providers=[CPU], runtime=RuntimeOptions(spinning=True))
    auto.load(warmup_batch=1)
    cpu.load(warmup_batch=1)
    assert auto.provider == (CUDA if cuda_provider_works() else CPU)
    x = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), np.uint8)
    np.testing.assert_allclose(auto.predict(x), cpu.predict(x), rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
def test_cuda_session_runs_with_heuristic_conv_search(exported):
    _, version, _ = exported
    model = ClassifierModel(version, providers=[CUDA, CPU])
    model.load(warmup_batch=1)
    assert model.provider == CUDA
    options = model.session.get_provider_options()[CUDA]
    assert options["cudnn_conv_algo_search"] in ("HEURISTIC", "1")  # ORT reports names or enum values
    assert options["arena_extend_strategy"] in ("kSameAsRequested", "1")
    for batch in (1, 7, 10, 33):  # new batch sizes must not fail (and, with HEURISTIC, not re-benchmark)
        assert model.predict(np.zeros((batch, 224, 224, 3), np.uint8)).shape == (batch, 10 + 4096)  # + features


def _thread_nice_values() -> set[int]:
    """The nice value of every thread of this process (/proc/self/task/*/stat, field 19)."""
    import os
    from pathlib import Path

    values = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        values.add(int(stat.rsplit(")", 1)[1].split()[16]))
    return values


def test_loading_runs_at_low_priority_but_serves_at_normal_priority(exported):
    """The steps of a load that start no threads run at nice +10 (low_priority); the serving session's threads,
    created afterwards by the loading thread, keep the process's own priority."""
    import os
    import threading

    from service.session import LOW_PRIORITY_NICE, low_priority

    root, version, _ = exported
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert low_priority(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())) == \
        min(19, base + LOW_PRIORITY_NICE)
    with pytest.raises(ZeroDivisionError):
        low_priority(lambda: 1 / 0)
    settings = cpu_settings(root, warmup_batch=1, intra_op_threads=2)
    model = default_loader(settings)(version)
    assert model.elision is not None and model.elision.fallback is None  # elided, checked, at low priority
    assert _thread_nice_values() == {base}  # ORT's intra-op threads included
    assert model.predict(np.zeros((2, 224, 224, 3), np.uint8)).shape == (2, 10 + 4096)  # issue 20: + features


def default_loader(settings):
    """How the service opens a version with these settings (the one factory's loader)."""
    from service.metrics import Metrics
    from service.pipeline import PipelineFactory

    return PipelineFactory(settings.pipeline_config(), Metrics()).load
