"""What one app (one uvicorn worker) holds: settings, the model repository, the metrics, the thread limits.

Lives in ``app.state.service``. The repository is started once, by `start()`, which the lifespan runs in the
background: the server answers at once (``/health/live`` 200, ``/health/ready`` and inference 503 with
Retry-After) and turns ready once every model it serves has a loaded, warmed-up version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable

import onnxruntime as ort

from alexnet_store import ModelStore
from service.admission import Admission, default_limits
from service.auth import ApiKeys
from service.dataplane import DataPlane
from service.errors import Conflict, NotReady
from service.metrics import Metrics
from service.model import ClassifierModel, resolve_providers
from service.pipeline import ModelLoader, PipelineFactory
from service.repository import ModelRepository, trim_heap
from service.runner import InferenceRunner, run_to_completion
from service.session import low_priority
from service.settings import Settings
from service.shadow import Shadows
from service.tracing import Tracing
from service.uploads import UploadLimits

log = logging.getLogger(__name__)

RunnerFactory = Callable[[ClassifierModel, Metrics, Settings], InferenceRunner]
LOAD_FAILURE_EXIT_CODE = 3  # uvicorn's STARTUP_FAILURE: its supervisor stops instead of restarting the worker


class ServiceState:
    def __init__(self, settings: Settings, metrics: Metrics, *, loader: ModelLoader | None = None,
                 runner_factory: RunnerFactory | None = None, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = tracing
        self.metrics = metrics
        self.upload_limits = UploadLimits(max_file_bytes=settings.max_file_bytes,
                                          max_request_bytes=settings.max_request_bytes,
                                          max_files=settings.max_files_per_request)
        # a version loads at low priority (nice +10) while the others serve: what they leave (service/session.py)
        self.factory = PipelineFactory(
            settings.pipeline_config(), metrics, loader=loader, prepare=low_priority,
            runner_factory=(lambda model: runner_factory(model, metrics, settings)) if runner_factory else None)
        self.repository = ModelRepository(
            ModelStore(settings.model_store), self.factory, metrics=metrics, models=settings.models,
            policies=settings.policies, poll_seconds=settings.repository_poll_seconds,
            retry_after=settings.retry_after_seconds, traffic=settings.traffic_rules())
        self.requested_providers = resolve_providers(settings.provider_request)
        self.api_keys = ApiKeys.load(settings.api_keys_file) if settings.api_keys_file else None
        self._reclaimer: asyncio.Task[None] | None = None
        max_bytes, max_images = default_limits()
        self.admission = Admission(max_bytes=settings.max_inflight_bytes or max_bytes,
                                   max_images=settings.max_inflight_images or max_images,
                                   retry_after=settings.retry_after_seconds, metrics=metrics)
        self.shadows = Shadows(self.repository, self.admission, metrics, max_inflight=settings.shadow_max_inflight,
                               tracing=tracing)
        self.dataplane = DataPlane(self.repository, self.admission, metrics, self.shadows,
                                   max_neighbours=settings.search_max_neighbours)

    async def start(self) -> None:
        """Load what the version policies select; with `exit_on_load_failure`, exit if a model has no version."""
        repository = self.repository
        if self.settings.reclaim_idle_seconds > 0:
            self._reclaimer = asyncio.create_task(self.reclaim_when_idle(), name="reclaim-memory")
        await repository.start()
        if repository.ready:
            return
        log.error("not ready after loading: %s", repository.not_ready_reason())
        if self.settings.exit_on_load_failure:
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
            sys.stderr.flush()
            os._exit(LOAD_FAILURE_EXIT_CODE)

    async def reclaim_when_idle(self) -> None:
        """Once the service has been idle for `reclaim_idle_seconds` after some work, give memory back: each loaded
        version's ONNX Runtime arena shrinks (a one-patch run, ClassifierModel.release_memory) and glibc returns its
        free pages (malloc_trim). A burst's memory then goes back within seconds of its end, and sustained load
        pays nothing. bench/stress.py burst measures it (docs/api.md#memory)."""
        wait = self.settings.reclaim_idle_seconds
        reclaimed = time.monotonic()
        while True:
            await asyncio.sleep(max(0.5, wait / 2))
            admission = self.admission
            if admission.requests or admission.last_end <= reclaimed or time.monotonic() - admission.last_end < wait:
                continue
            models = [v.model for versions in self.repository.served.values() for v in versions.values()]
            await run_to_completion(self._reclaim, models)
            reclaimed = time.monotonic()

    @staticmethod
    def _reclaim(models: list[ClassifierModel]) -> None:
        for model in models:
            if model.ready:
                model.release_memory()
        trim_heap()

    async def stop(self) -> None:
        if self._reclaimer is not None:
            self._reclaimer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reclaimer
        await self.shadows.stop()
        await self.repository.stop()
        if self.tracing is not None:
            self.tracing.shutdown()
        self.metrics.worker_exit()

    def require_ready(self) -> None:
        if not self.repository.ready:
            raise NotReady(self.repository.not_ready_reason(), retry_after=self.settings.retry_after_seconds,
                           reason="loading" if not self.repository.started else "unavailable")

    def require_control(self) -> None:
        """Explicit load/unload reaches one worker's repository only, so it is refused with several workers."""
        if self.settings.workers > 1:
            raise Conflict(f"model control needs a single worker (this service runs {self.settings.workers}, each "
                           "with its own repository); with several workers new versions are picked up by polling "
                           "(ALEXNET_REPOSITORY_POLL_SECONDS)", reason="several_workers")

    @staticmethod
    def available_providers() -> list[str]:
        return list(ort.get_available_providers())
