"""Shadow traffic: a copy of a share of a model's requests, run on another version after the primary answered.

The dataplane hands a request's images here once its own answer is computed (service/dataplane.py); the copy
runs in a task of its own, so the client's answer never waits for it, and:

- it **never affects the client**: whatever it raises (the version is not loaded, its model fails, its queue is
  full) is counted in ``alexnet_shadow_requests_total{outcome}`` and logged at debug level, nothing more;
- it is **compared**: each image's top-1 class against the primary's, in ``alexnet_shadow_top1_total{agree}``,
  and timed in ``alexnet_shadow_duration_seconds`` (model, version labels: the shadow's);
- it is **bounded and shed first**: at most ``ALEXNET_SHADOW_MAX_INFLIGHT`` copies at a time per worker, each
  holding its own admission ticket, and a copy is dropped (``outcome="shed"``) rather than started when that
  many are running, when the requests in flight hold more than half the admission budget (bytes or images),
  or when the shadow version already has requests waiting for its model. Client requests are never refused
  to make room for a copy; copies give way to them. Memory held by shadows is so at most the in-flight cap
  times one request, within the admission budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import numpy as np

from alexnet_store.vocabulary import CropScheme
from service import requestctx
from service.admission import Admission
from service.errors import Overloaded
from service.metrics import Metrics
from service.repository import ModelRepository, ServedVersion

log = logging.getLogger(__name__)


class Shadows:
    def __init__(self, repository: ModelRepository, admission: Admission, metrics: Metrics, *, max_inflight: int,
                 tracing=None) -> None:
        self.repository = repository
        self.admission = admission
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.tracing = tracing  # service/tracing.py `Tracing`, or None
        self.tasks: set[asyncio.Task[None]] = set()

    def _busy(self, served: ServedVersion | None, images: int, nbytes: int) -> str | None:
        """Why a copy must not start now (None: it may)."""
        if len(self.tasks) >= self.max_inflight:
            return f"{len(self.tasks)} shadow requests are running (ALEXNET_SHADOW_MAX_INFLIGHT)"
        a = self.admission
        if a.images + images > a.max_images // 2 or a.bytes + nbytes > a.max_bytes // 2:
            return "the requests in flight hold more than half the admission budget"
        waiting = getattr(served.runner, "waiting", 0) if served is not None else 0
        if waiting:
            return f"the shadow version has {waiting} requests waiting for its model"
        return None

    def mirror(self, name: str, versions: Sequence[int], images: list[bytes], scheme: CropScheme,
               primary_top1: list[int]) -> list[int]:
        """Start a copy of a request on each of `versions` that may take one now; returns those started."""
        started = []
        nbytes = sum(len(i) for i in images)
        for version in versions:
            served = self.repository.served.get(name, {}).get(version)
            why = self._busy(served, len(images), nbytes)
            if why is not None:
                self.metrics.shadow_requests.labels(name, str(version), "shed").inc()
                log.debug("shadow copy for %s v%d shed: %s", name, version, why)
                continue
            span = self.tracing.parent() if self.tracing is not None else None
            task = asyncio.create_task(self._run(name, version, images, scheme, primary_top1, span),
                                       name=f"shadow-{name}-{version}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            started.append(version)
        return started

    async def _run(self, name: str, version: int, images: list[bytes], scheme: CropScheme, primary_top1: list[int],
                   parent) -> None:
        requestctx.bind(None)  # this task's context is a copy of the request's: its runners must not note into it
        labels = (name, str(version))
        start = time.perf_counter()
        outcome = "error"
        try:
            with self.admission.ticket(sum(len(i) for i in images)) as ticket:
                ticket.charge_images(len(images))
                served = self.repository.resolve(name, version)
                async with self.repository.hold(served):
                    result = await served.pipeline(images, schemes=(scheme,), top_k=0)
            bad = result.first_error()
            if bad is not None:
                raise RuntimeError(f"image {bad.position}: {bad.error}")
            outcome = "ok"
            for image, theirs in zip(result.images, primary_top1, strict=True):
                ours = int(np.argmax(image.schemes[scheme].probabilities))
                self.metrics.shadow_top1.labels(*labels, "true" if ours == theirs else "false").inc()
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Overloaded:  # the budget or the shadow's queue filled up meanwhile: given way, like a shed copy
            outcome = "shed"
        except Exception as exc:  # a shadow's failure is counted, never the client's
            log.debug("shadow copy for %s v%d failed: %s", name, version, exc)
        finally:
            end = time.perf_counter()
            if outcome != "cancelled":
                self.metrics.shadow_requests.labels(*labels, outcome).inc()
                if outcome == "ok":
                    self.metrics.shadow_duration.labels(*labels).observe(end - start)
            if self.tracing is not None and parent is not None:
                self.tracing.shadow_span(parent, name, version, start, end, outcome)

    async def stop(self) -> None:
        """Cancel the copies still running (at shutdown, before the versions are released)."""
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
