"""Execution providers: what is asked for versus what the session really runs on."""

from __future__ import annotations

import ctypes.util

import onnxruntime as ort
import pytest
from support.gpu import cuda_provider_works

from service.model import CPU, CUDA, ClassifierModel, resolve_providers


def test_auto_asks_for_cuda_only_where_a_driver_exists() -> None:
    """The oracle is independent of the code under test: the dynamic linker's own search for the driver library."""
    providers = resolve_providers(None)
    assert providers[-1] == CPU
    driver = ctypes.util.find_library("cuda") is not None
    assert (CUDA in providers) == (CUDA in ort.get_available_providers() and driver)


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not in this onnxruntime build"):
        resolve_providers(["NoSuchExecutionProvider"])


@pytest.mark.skipif(CUDA not in ort.get_available_providers(), reason="this onnxruntime build has no CUDA provider")
def test_explicit_cuda_request_reports_the_provider_it_really_got(exported) -> None:
    _, version, _ = exported
    model = ClassifierModel(version, providers=[CUDA, CPU])
    model.load(warmup_batch=1)
    assert model.requested_providers[0] == CUDA
    assert model.provider == (CUDA if cuda_provider_works() else CPU)


def test_cpu_session_runs_without_the_lrn_layout_round_trips(exported) -> None:
    _, version, _ = exported
    model = ClassifierModel(version, providers=[CPU])
    model.load(warmup_batch=1)
    assert model.elision is not None and model.elision.fallback is None
    assert model.elision.removed_reorders > 0  # the service API tests check its answers against PyTorch
