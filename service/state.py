"""What one app (one uvicorn worker) holds: settings, the model, the runner, the metrics, the thread limits.

Lives in ``app.state.service``. The model is loaded once, by `load()`, which the lifespan starts in the
background: the server answers at once (``/health/live`` 200, ``/health/ready`` and ``/predict`` 503 with
Retry-After) and turns ready only after the model is loaded and its warm-up run is done.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Literal

import anyio
import anyio.to_thread
import onnxruntime as ort

from alexnet_store import ModelStore, ModelVersion
from service.batching import BatchingRunner
from service.errors import NotReady
from service.metrics import Metrics
from service.model import ClassifierModel, RuntimeOptions
from service.preprocess import CropScheme, DecodeLimits, PreparedImage
from service.runner import InferenceRunner, ThreadRunner
from service.settings import Settings
from service.uploads import UploadLimits

log = logging.getLogger(__name__)

RunnerFactory = Callable[[ClassifierModel, Metrics, Settings], InferenceRunner]
LOAD_FAILURE_EXIT_CODE = 3  # uvicorn's STARTUP_FAILURE: its supervisor stops instead of restarting the worker


def default_runner(model: ClassifierModel, metrics: Metrics, settings: Settings) -> InferenceRunner:
    """The dynamic batcher (`ALEXNET_BATCHING`, the default), or one run per request without it."""
    if settings.batching:
        return BatchingRunner(model, metrics, max_batch=settings.max_batch_patches,
                              max_delay=settings.max_batch_delay_ms / 1000, max_queued=settings.max_queued_inferences,
                              concurrency=settings.inference_concurrency, retry_after=settings.retry_after_seconds)
    return ThreadRunner(model, metrics, concurrency=settings.inference_concurrency,
                        max_queued=settings.max_queued_inferences, retry_after=settings.retry_after_seconds)


class ServiceState:
    def __init__(self, settings: Settings, metrics: Metrics, model: ClassifierModel | None = None,
                 runner_factory: RunnerFactory | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model = model
        self.version: ModelVersion | None = model.version if model is not None else None
        self.runner_factory = runner_factory or default_runner
        self.runner: InferenceRunner | None = None
        self.state: Literal["loading", "ready", "failed"] = "loading"
        self.error: str | None = None
        self.upload_limits = UploadLimits(max_file_bytes=settings.max_file_bytes,
                                          max_request_bytes=settings.max_request_bytes,
                                          max_files=settings.max_files_per_request)
        self.decode_limits = DecodeLimits(max_pixels=settings.max_pixels, draft=settings.jpeg_draft)
        self.decode_threads = anyio.CapacityLimiter(settings.effective_decode_threads())
        self.requested_providers: list[str] = []

    # -- loading ----------------------------------------------------------------------------------------
    def _build_model(self) -> ClassifierModel:
        if self.version is None:
            store = ModelStore(self.settings.model_store)
            self.version = store.resolve(self.settings.model_name, self.settings.model_version)
        return ClassifierModel(self.version, providers=self.settings.provider_request, limits=self.decode_limits,
                               runtime=RuntimeOptions.from_settings(self.settings))

    async def load(self) -> None:
        """Resolve, load and warm up the model, then start the runner; never raises (see `state`)."""
        start = time.perf_counter()
        try:
            if self.model is None:
                self.model = await anyio.to_thread.run_sync(self._build_model, abandon_on_cancel=True)
            self.requested_providers = list(self.model.requested_providers)
            if not self.model.ready:  # an injected model may come loaded already (tests, embedders)
                await anyio.to_thread.run_sync(self.model.load, self.settings.warmup_batch, abandon_on_cancel=True)
            runner = self.runner_factory(self.model, self.metrics, self.settings)
            await runner.start()
            self.runner = runner
        except Exception as exc:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
            log.error("model failed to load: %s", self.error)
            if self.settings.exit_on_load_failure:
                for handler in logging.getLogger().handlers + log.handlers:
                    handler.flush()
                sys.stderr.flush()
                os._exit(LOAD_FAILURE_EXIT_CODE)
            return
        meta = self.model.metadata
        self.metrics.model_ready.labels(meta.name, str(meta.version), self.model.provider).set(1)
        self.state = "ready"
        log.info("ready: model %s v%d on %s (load + warm-up %.1f s)", meta.name, meta.version,
                 self.model.provider, time.perf_counter() - start)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
        if self.model is not None and self.state == "ready":
            meta = self.model.metadata
            self.metrics.model_ready.labels(meta.name, str(meta.version), self.model.provider).set(0)
        self.metrics.worker_exit()

    # -- serving ----------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def require_ready(self) -> tuple[ClassifierModel, InferenceRunner]:
        if self.state == "ready" and self.model is not None and self.runner is not None:
            return self.model, self.runner
        if self.state == "failed":
            raise NotReady(f"the model failed to load: {self.error}", retry_after=self.settings.retry_after_seconds,
                           reason="load_failed")
        raise NotReady("the model is still loading; retry shortly", retry_after=self.settings.retry_after_seconds,
                       reason="loading")

    async def prepare(self, model: ClassifierModel, data: bytes, crops: CropScheme) -> tuple[PreparedImage, float]:
        """Decode + resize + crop in a worker thread (Pillow releases the GIL); returns the seconds it took."""

        def work() -> tuple[PreparedImage, float]:
            start = time.perf_counter()
            prepared = model.prepare(data, crops)
            elapsed = time.perf_counter() - start
            self.metrics.preprocess_time.observe(elapsed)
            return prepared, elapsed

        return await anyio.to_thread.run_sync(work, limiter=self.decode_threads)

    @staticmethod
    def available_providers() -> list[str]:
        return list(ort.get_available_providers())
