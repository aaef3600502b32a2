"""The one seam between the HTTP routes and the model: `await runner.infer(patches) -> probabilities`.

Routes never call the model directly; they call the `InferenceRunner` in ``app.state.service.runner``.
Today that is `ThreadRunner`: one model run per request, in a worker thread (ONNX Runtime releases the
GIL, so the event loop keeps answering), at most `concurrency` runs at a time, and at most `max_queued`
requests waiting for a run — beyond that `Overloaded` (503 with Retry-After).

A cross-request dynamic batcher (gather patches from several requests up to a maximum batch or a maximum
queue delay, run once, hand each request its rows back) is another `InferenceRunner`: it implements
`infer` with the same contract, raises `Overloaded` when its bounded queue is full, and is chosen in
`service.app.default_runner`. No route changes.
"""

from __future__ import annotations

import abc
import asyncio
import time

import anyio
import anyio.to_thread
import numpy as np

from service.errors import Overloaded
from service.metrics import Metrics
from service.model import ClassifierModel


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

    def __init__(self, model: ClassifierModel, metrics: Metrics, *, concurrency: int = 1, max_queued: int = 64,
                 retry_after: int = 1) -> None:
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
