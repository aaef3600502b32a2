"""The one seam between the HTTP routes and the model: `await runner.infer(patches) -> probabilities`.

Routes never call the model directly: they lease a loaded version from the repository
(``app.state.service.repository``, `service.repository.ModelRepository.lease`), whose `service.pipeline.Pipeline`
calls that version's `InferenceRunner` (``ServedVersion.runner``), made by `service.app_state.default_runner`:

- `service.batching.BatchingRunner` (the default): dynamic batching across requests — the patches of
  concurrent requests go through the model together, up to a maximum batch and a maximum queue delay;
- `ThreadRunner` (``ALEXNET_BATCHING=false``): one model run per request, in a worker thread (ONNX Runtime
  releases the GIL, so the event loop keeps answering), at most `concurrency` runs at a time. A request's
  probabilities then never depend on which other requests were in flight (batch composition can change the
  last bits of a float result), and it is the "batching off" line of the benchmark.

Both bound their queue: beyond `max_queued` waiting requests, `infer` raises `Overloaded` (503 with
Retry-After) instead of letting latency grow without limit.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from service.errors import Overloaded
from service.metrics import Metrics
from service.model import ClassifierModel


async def run_to_completion(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a worker thread; if the awaiting task is cancelled meanwhile (a shutdown), the cancellation
    waits for the thread to finish before it goes on.

    `anyio.to_thread.run_sync` shields its thread only against anyio's own cancel scopes: a plain `task.cancel()`
    (the lifespan's, when the service stops while a version loads) returns at once and leaves the thread running.
    A thread still inside ONNX Runtime when the interpreter exits aborts the process ("terminate called without
    an active exception", exit 134: the test suite hit it after a test that stopped its app mid-load), and a
    thread still using a session that shutdown releases is worse. Loads and the idle reclaim run through here."""
    job = asyncio.ensure_future(anyio.to_thread.run_sync(fn, *args))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        while not job.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([job])
        if not job.cancelled():
            job.exception()  # retrieved: the caller is gone, the cancellation is what it gets
        raise


class InferenceRunner(abc.ABC):
    """uint8 patches [M, crop, crop, 3] → softmax probabilities [M, K], row for row."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called once, after the model is loaded and before the service says it is ready."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Called once at shutdown; pending calls may be failed with ServiceUnavailable."""

    @abc.abstractmethod
    async def infer(self, patches: np.ndarray) -> np.ndarray:
        """Run the model on `patches`; may raise Overloaded (503 + Retry-After) when saturated."""


class ThreadRunner(InferenceRunner):
    """One model run per call, in a worker thread, `concurrency` at a time, `max_queued` waiting (0: unbounded)."""

    def __init__(self, model: ClassifierModel, metrics: Metrics, *, concurrency: int, max_queued: int,
                 retry_after: int) -> None:
        self.model = model
        self.metrics = metrics
        self.concurrency = concurrency
        self.max_queued = max_queued
        self.retry_after = retry_after
        self._slots = asyncio.Semaphore(concurrency)
        self._threads = anyio.CapacityLimiter(concurrency)
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    async def infer(self, patches: np.ndarray) -> np.ndarray:
        if self.max_queued and self._slots.locked() and self._waiting >= self.max_queued:
            raise Overloaded(
                f"the model is busy: {self._waiting} requests are already waiting; retry shortly",
                retry_after=self.retry_after, reason="overloaded")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            return await anyio.to_thread.run_sync(self._run, patches, limiter=self._threads)
        finally:
            self._slots.release()

    def _run(self, patches: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        probs = self.model.predict(patches)
        self.metrics.inference_time.observe(time.perf_counter() - start)
        self.metrics.inference_batch.observe(len(patches))
        return probs
