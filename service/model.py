"""One model version in an ONNX Runtime session: load (checksum, serving graph, session, warm-up) and predict.

The rest of KServe's steps — preprocess and postprocess, and their composition — are in service/pipeline.py,
which every transport calls. The model knows nothing of HTTP.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx
import onnxruntime as ort

from alexnet_store import ModelMetadata, ModelVersion
from service.defaults import (
    CPU_REORDER_ELISION,
    CUDNN_CONV_ALGO_SEARCH,
    INSTANCES,
    INTRA_OP_SPINNING,
    INTRA_OP_THREADS,
)
from service.graph import GRAPH_FEATURES, GRAPH_INPUT, GRAPH_OUTPUT, build_serving_model
from service.session import ElisionReport, Prepare, cpu_sessions, run_here, session_options

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


CudnnConvAlgoSearch = Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]


def features_dim(metadata: ModelMetadata) -> int:
    """The width of a version's features output (its penultimate layer, `onnx.features`); 0: none."""
    features = metadata.onnx.features
    return features.dim if features is not None else 0


def output_width(metadata: ModelMetadata) -> int:
    """Columns of each row `ClassifierModel.predict` returns: the classes, then the features when there are any."""
    return metadata.num_classes + features_dim(metadata)


@dataclass(frozen=True)
class RuntimeOptions:
    """How the ONNX Runtime session is opened (settings: docs/api.md).

    - `intra_op_threads`: ORT's thread pool size; 0 = ORT's default (one per physical core).
    - `spinning`: whether idle pool threads spin-wait for the next parallel section. Spinning shortens the
      hand-off between layers but burns a core that JPEG decoding could use (docs/benchmark.md measures it).
    - `cudnn_conv_algo_search`: ORT's CUDA default, EXHAUSTIVE, benchmarks every convolution algorithm again
      for each new input shape; dynamic batching makes many batch sizes, so each would stall one request.
      HEURISTIC asks cuDNN for its choice without timing.
    - the CUDA memory arena grows by what is requested (kSameAsRequested), not in doubling steps, so varying
      batch sizes do not reserve twice the memory they use.
    - `reorder_elision`: on the CPU, remove ONNX Runtime's layout round trips around the LRN (service/session.py).
    - `instances` × `instance_threads`: an instance group (Triton's name), on the CPU: besides the session above
      (`intra_op_threads`: all cores), `instances` more sessions of `instance_threads` threads each, so several
      batches run at once, each on its own cores (service/runner.py `Instances` schedules them). 1: none, the one
      session takes every run. The settings size it so instances × threads never exceeds the cores.
    """

    intra_op_threads: int = INTRA_OP_THREADS  # the values Settings declares its fields with (service/defaults.py)
    spinning: bool = INTRA_OP_SPINNING
    cudnn_conv_algo_search: CudnnConvAlgoSearch = CUDNN_CONV_ALGO_SEARCH
    reorder_elision: bool = CPU_REORDER_ELISION
    instances: int = INSTANCES
    instance_threads: int = 0  # resolved by the settings (0 without a group)

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeOptions:
        """The one mapping from the service's settings, shared by the service and the benchmark's ceiling so
        the ceiling's sessions stay opened exactly like the service's."""
        return cls(intra_op_threads=settings.effective_intra_op_threads(), spinning=settings.intra_op_spinning,
                   cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
                   reorder_elision=settings.cpu_reorder_elision, instances=settings.effective_instances(),
                   instance_threads=settings.effective_instance_threads())

    def session_config(self) -> dict[str, str]:
        return {"session.intra_op.allow_spinning": "1" if self.spinning else "0"}

    def session_options(self) -> ort.SessionOptions:
        return session_options(self.intra_op_threads, self.session_config())

    def providers(self, names: Sequence[str]) -> list[str | tuple[str, dict[str, str]]]:
        """Provider names with their options; CPU needs none."""
        cuda = {"cudnn_conv_algo_search": self.cudnn_conv_algo_search, "arena_extend_strategy": "kSameAsRequested"}
        return [(name, cuda) if name == CUDA else name for name in names]


@functools.cache
def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads (the container toolkit injects it on GPU hosts).

    onnxruntime-gpu lists CUDA among its providers on any machine; without a driver, asking for it only
    costs a loud error in the log before the fall-back to CPU. With a driver, the CUDA/cuDNN libraries
    of the `gpu` extra's pip packages are preloaded so the provider finds them without LD_LIBRARY_PATH.
    """
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # a partial CUDA install: the session will report what it really got
            log.warning("could not preload the CUDA libraries: %s", exc)
    return True


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    """`None`/["auto"]: CUDA first when this onnxruntime build has it and a driver is present, then CPU.

    Unknown names are an error. What is asked for is not what runs: `ClassifierModel.provider` says that.
    """
    available = ort.get_available_providers()
    if not requested or list(requested) == ["auto"]:
        if CUDA in available and not cuda_driver_present():
            log.info("no NVIDIA driver (libcuda.so.1) here: using %s", CPU)
        return [p for p in (CUDA, CPU) if p in available and (p != CUDA or cuda_driver_present())]
    unknown = [p for p in requested if p not in available]
    if unknown:
        raise ValueError(f"execution providers {unknown} are not in this onnxruntime build (available: {available})")
    if CUDA in requested:
        cuda_driver_present()  # preloads the pip CUDA libraries where a driver exists
    return list(requested)


class ClassifierModel:
    def __init__(self, version: ModelVersion, providers: Sequence[str] | None = None,
                 runtime: RuntimeOptions | None = None) -> None:
        self.version = version
        self.metadata = version.metadata
        self.requested_providers = resolve_providers(providers)
        self.runtime = runtime or RuntimeOptions()
        self.session: ort.InferenceSession | None = None
        self.instances: list[ort.InferenceSession] = []  # the instance group's sessions (CPU, instances > 1)
        self.elision: ElisionReport | None = None  # CPU sessions only
        self._release: ort.RunOptions | None = None  # run options that shrink the arena at the end of a run

    # -- load -------------------------------------------------------------------------------------------
    @property
    def provider(self) -> str:
        """The execution provider the session actually runs on (never just what was asked for)."""
        if self.session is None:
            raise RuntimeError("model not loaded")
        return self.session.get_providers()[0]

    @property
    def ready(self) -> bool:
        return self.session is not None

    @property
    def features_dim(self) -> int:
        """The width of the version's features output (its penultimate layer, `onnx.features`); 0: none."""
        return features_dim(self.metadata)

    def load(self, warmup_batch: int = 10, prepare: Prepare = run_here) -> None:
        """Verify the checksum, build the serving graph, open the session, and run it once.

        `prepare` runs the steps that start no threads — the checksum, the serving graph, the CPU graph's
        optimisation and rewrite — e.g. at a low priority while another version serves (service/session.py
        `low_priority`); the session and its warm-up run at the caller's priority."""
        serving = prepare(self._serving_graph)
        instances: list[ort.InferenceSession] = []
        if self.requested_providers == [CPU]:
            group = [self.runtime.instance_threads] * self.runtime.instances if self.runtime.instances > 1 else []
            (session, *instances), self.elision = cpu_sessions(
                serving, [self.runtime.intra_op_threads, *group], elide=self.runtime.reorder_elision,
                config=self.runtime.session_config(), prepare=prepare)
            log.info("CPU layout reorders removed: %d (%s)", self.elision.removed_reorders,
                     self.elision.fallback or "checked against the plain session")
        else:
            session = ort.InferenceSession(serving, self.runtime.session_options(),
                                           providers=self.runtime.providers(self.requested_providers))
        got = session.get_providers()
        if self.requested_providers[0] != got[0]:
            log.warning("asked for %s but onnxruntime runs on %s (CUDA libraries or GPU unavailable)",
                        self.requested_providers[0], got[0])
        self.session = session
        self.instances = instances
        self._release = ort.RunOptions()
        self._release.add_run_config_entry("memory.enable_memory_arena_shrinkage",
                                           "cpu:0;gpu:0" if got[0] == CUDA else "cpu:0")
        start = time.perf_counter()
        crop = self.metadata.preprocessing.crop_size
        for instance in (None, *range(len(instances))):
            self.predict(np.zeros((warmup_batch, crop, crop, 3), np.uint8), release_memory=True, instance=instance)
        group = (f" and {len(instances)} instances × {self.runtime.instance_threads} threads" if instances else "")
        log.info("model %s v%d loaded on %s%s; warm-up batch of %d in %.0f ms", self.metadata.name,
                 self.metadata.version, got[0], group, warmup_batch, 1000 * (time.perf_counter() - start))

    def _serving_graph(self) -> bytes:
        self.version.verify()
        return build_serving_model(onnx.load(str(self.version.onnx_path)), self.metadata).SerializeToString()

    # -- predict ----------------------------------------------------------------------------------------
    def predict(self, patches: np.ndarray, *, release_memory: bool = False, instance: int | None = None) -> np.ndarray:
        """uint8 patches [M, crop, crop, 3] → softmax probabilities [M, K] (one run, any M); for a version with a
        features output, [M, K + D]: each row its probabilities followed by its features, from the same run (one
        array, so the runners and the batcher split and join rows without knowing; the pipeline splits columns).

        ONNX Runtime keeps the activations' memory in an arena that only grows: one run of 80 patches of the
        1,000-class network takes the process from 0.86 to 1.64 GB and it stays there. With `release_memory`
        the arena gives back what it does not need at the end of this run (ORT's arena shrinkage): back to
        0.80 GB, measured on the same session. The service asks for it with a one-patch run once it has been
        idle for a moment (`ServiceState.reclaim_when_idle`), so a burst's memory goes back when the burst is
        over while sustained load keeps the arena warm and pays nothing.

        `instance` runs it on that session of the instance group; None on the main (all-cores) session.
        """
        if self.session is None:
            raise RuntimeError("model not loaded")
        session = self.session if instance is None else self.instances[instance]
        options = self._release if release_memory else None
        if not self.features_dim:
            (probs,) = session.run([GRAPH_OUTPUT], {GRAPH_INPUT: patches}, options)
            return probs
        probs, features = session.run([GRAPH_OUTPUT, GRAPH_FEATURES], {GRAPH_INPUT: patches}, options)
        return np.concatenate([probs, features], axis=1)

    def release_memory(self) -> None:
        """Give back the arena's spare memory: a one-patch run that shrinks the arena at its end."""
        crop = self.metadata.preprocessing.crop_size
        for instance in (None, *range(len(self.instances))):
            self.predict(np.zeros((1, crop, crop, 3), np.uint8), release_memory=True, instance=instance)

    def close(self) -> None:
        """Drop the sessions (ONNX Runtime frees their memory when the last reference goes)."""
        self.session = None
        self.instances = []
