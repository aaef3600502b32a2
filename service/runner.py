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
Retry-After) instead of letting latency grow without limit. Both run through `Instances`, which says which
session of the version a run goes to (its instance group, when it has one).
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

from service import requestctx
from service.errors import Overloaded
from service.metrics import Metrics
from service.model import ClassifierModel
from service.session import physical_cores


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


WIDE = -1  # a run on the model's main session (every core), holding every instance meanwhile


class Instances:
    """Where each model run goes, and how many run at once.

    - One session (no instance group, the default): every run on it, `concurrency` at a time.
    - An instance group of N sessions × T threads (`ClassifierModel.instances`, N × T ≤ cores): one run at a
      time on each instance. With `adaptive`, a run that would be the only one — nothing else running, nothing
      else waiting (the caller says) — goes to the main session with every core instead, and holds all N
      instances until it is done. A lone request so keeps the latency of all cores, and load spreads over the
      instances: never more threads than cores busy. `threads_busy`/`peak_threads` count them
      (tests/test_instances.py), and ``alexnet_inference_runs_total{session}`` says where runs went.
    """

    def __init__(self, model: ClassifierModel, metrics: Metrics, *, concurrency: int, adaptive: bool) -> None:
        self.model = model
        self.metrics = metrics
        self.group = len(model.instances)
        self.adaptive = adaptive and self.group > 1
        self.slots = self.group if self.group > 1 else concurrency
        self._free = list(range(self.slots))
        self._changed = asyncio.Condition()
        self.threads_busy = 0
        self.peak_threads = 0

    @property
    def busy(self) -> int:
        return self.slots - len(self._free)

    def free(self) -> bool:
        return bool(self._free)

    async def acquire(self) -> int:
        """A free slot (waiting for one): an instance of the group, or one of the session's `concurrency`."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._free))
            return self._free.pop()

    def place(self, slot: int, *, alone: bool) -> int:
        """Where the run holding `slot` goes: `WIDE` (every slot taken) when adaptive and it is alone."""
        if self.adaptive and alone and len(self._free) == self.slots - 1:
            self._free.clear()
            slot = WIDE
        self._count(slot, +1)
        return slot

    async def release(self, slot: int, *, counted: bool = True) -> None:
        if counted:
            self._count(slot, -1)
        async with self._changed:
            self._free = list(range(self.slots)) if slot == WIDE else [*self._free, slot]
            self._changed.notify_all()

    def instance(self, slot: int) -> int | None:
        """The model's `predict(instance=...)` for a slot: None is the main session."""
        return None if slot == WIDE or self.group <= 1 else slot

    def _threads(self, slot: int) -> int:
        runtime = self.model.runtime
        if self.instance(slot) is not None:
            return runtime.instance_threads
        return runtime.intra_op_threads or physical_cores()

    def _count(self, slot: int, sign: int) -> None:
        self.threads_busy += sign * self._threads(slot)
        self.peak_threads = max(self.peak_threads, self.threads_busy)
        if sign > 0:
            self.metrics.inference_runs.labels("main" if self.instance(slot) is None else "instance").inc()

    def run(self, slot: int, patches: np.ndarray) -> np.ndarray:
        """In a worker thread: one model run on the slot's session, timed."""
        start = time.perf_counter()
        probs = self.model.predict(patches, instance=self.instance(slot))
        self.metrics.inference_time.observe(time.perf_counter() - start)
        self.metrics.inference_batch.observe(len(patches))
        return probs


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

    def __init__(self, model: ClassifierModel, metrics: Metrics, *, concurrency: int, adaptive: bool,
                 max_queued: int, retry_after: int) -> None:
        self.model = model
        self.metrics = metrics
        self.instances = Instances(model, metrics, concurrency=concurrency, adaptive=adaptive)
        self.max_queued = max_queued
        self.retry_after = retry_after
        self._threads = anyio.CapacityLimiter(self.instances.slots)
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    async def infer(self, patches: np.ndarray) -> np.ndarray:
        if self.max_queued and not self.instances.free() and self._waiting >= self.max_queued:
            raise Overloaded(
                f"the model is busy: {self._waiting} requests are already waiting; retry shortly",
                retry_after=self.retry_after, reason="overloaded")
        self._waiting += 1
        enqueued = time.perf_counter()
        try:
            slot = await self.instances.acquire()
        finally:
            self._waiting -= 1
        placed = False
        try:
            slot = self.instances.place(slot, alone=self._waiting == 0)
            placed = True
            started = time.perf_counter()
            probs = await anyio.to_thread.run_sync(self.instances.run, slot, patches, limiter=self._threads)
            requestctx.note_run(enqueued, started, time.perf_counter(), patches=len(patches), requests=1)
            return probs
        finally:
            await self.instances.release(slot, counted=placed)
