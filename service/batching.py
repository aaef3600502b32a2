"""Dynamic batching across requests (Triton's dynamic batcher, for one ONNX Runtime session).

`BatchingRunner.infer(patches)` puts a request's patches in a FIFO queue and waits. One dispatcher task
turns the queue into model runs:

1. it waits for a free run slot (`concurrency` runs at a time, or one per instance of the version's instance
   group; each in a worker thread, ONNX Runtime releases the GIL), so requests that arrive while the model is
   busy pile up and go together;
2. it takes the oldest request and, while the batch is short of `max_batch` patches, waits for more until
   that request has been queued `max_delay` seconds (a request that already waited that long, because
   the model was busy, goes at once);
3. it takes whole requests in arrival order up to `max_batch` patches, concatenates them into one array,
   runs the model once and hands every request exactly its own rows back. With an instance group
   (service/runner.py `Instances`) and `adaptive`, a batch that leaves nothing waiting while nothing else runs
   goes to the all-cores session; when more than one batch waits they spread over the instances.

A request larger than `max_batch` is split into chunks of at most `max_batch` patches that queue one after
the other, so no run ever exceeds `max_batch`. The queue is bounded in requests: beyond `max_queued`
waiting requests `infer` raises `Overloaded` (503 with Retry-After) at once instead of letting latency grow
without limit. `stop()` fails whatever is still queued with `ServiceUnavailable` and lets running batches
finish.

Why batching pays on a CPU: a run of 80 patches costs less per patch than eight runs of 10 (ONNX Runtime
parallelises each layer over the batch, with less synchronisation per patch); on a GPU it is the
difference between a busy and an idle device. docs/benchmark.md has the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import numpy as np

from service import requestctx
from service.errors import Overloaded, ServiceUnavailable
from service.metrics import Metrics
from service.model import ClassifierModel, output_width
from service.runner import InferenceRunner, Instances

log = logging.getLogger(__name__)


@dataclass
class _Request:
    """One infer() call: the queue holds it until its last chunk has gone into a batch."""

    chunks_left: int


@dataclass(eq=False)
class _Chunk:
    """Up to max_batch patches of one request, and the future its rows are delivered to."""

    patches: np.ndarray
    future: asyncio.Future[np.ndarray]
    request: _Request
    enqueued: float = field(default_factory=time.perf_counter)
    dispatched: float = 0.0  # when it went into a batch
    batch: tuple[int, int] = (0, 0)  # that batch's patches and requests


class BatchingRunner(InferenceRunner):
    """Gathers the patches of concurrent requests into runs of at most `max_batch` patches (see module doc)."""

    def __init__(self, model: ClassifierModel, metrics: Metrics, *, max_batch: int, max_delay: float, max_queued: int,
                 concurrency: int, adaptive: bool, retry_after: int) -> None:
        if max_batch < 1 or concurrency < 1 or max_delay < 0 or max_queued < 0:
            raise ValueError("max_batch and concurrency must be >= 1, max_delay and max_queued >= 0")
        self.model = model
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_queued = max_queued
        self.instances = Instances(model, metrics, concurrency=concurrency, adaptive=adaptive)
        self.retry_after = retry_after
        self._queue: deque[_Chunk] = deque()
        self._queued_requests = 0
        self._arrived = asyncio.Event()
        self._threads = anyio.CapacityLimiter(self.instances.slots)
        self._running: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def waiting(self) -> int:
        """Requests queued, not yet (entirely) in a batch."""
        return self._queued_requests

    async def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch(), name="batch-dispatcher")

    async def stop(self) -> None:
        self._stopping = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        while self._queue:
            chunk = self._queue.popleft()
            if not chunk.future.done():
                chunk.future.set_exception(ServiceUnavailable(
                    "the service is shutting down; retry on another instance", retry_after=self.retry_after,
                    reason="shutting_down"))
        self._queued_requests = 0
        self.metrics.queued_requests.set(0)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def infer(self, patches: np.ndarray) -> np.ndarray:
        if self._stopping or self._dispatcher is None:
            raise ServiceUnavailable("the service is not running its model (starting or shutting down)",
                                     retry_after=self.retry_after, reason="not_running")
        if self.max_queued and self._queued_requests >= self.max_queued:
            raise Overloaded(
                f"the model is busy: {self._queued_requests} requests are already waiting; retry shortly",
                retry_after=self.retry_after, reason="overloaded")
        if len(patches) == 0:
            return np.zeros((0, output_width(self.model.metadata)), np.float32)
        loop = asyncio.get_running_loop()
        starts = range(0, len(patches), self.max_batch)
        request = _Request(chunks_left=len(starts))
        chunks = [_Chunk(patches[s:s + self.max_batch], loop.create_future(), request) for s in starts]
        self._queue.extend(chunks)
        self._queued_requests += 1
        self.metrics.queued_requests.inc()
        self._arrived.set()
        try:
            parts = [await chunk.future for chunk in chunks]
        except BaseException:  # the client went away, or a run failed: the request's other chunks are dropped
            for chunk in chunks:
                if not chunk.future.cancel() and not chunk.future.cancelled():
                    chunk.future.exception()  # already failed too: consumed, so asyncio does not warn about it
            raise
        first = chunks[0]
        requestctx.note_run(first.enqueued, first.dispatched, time.perf_counter(), patches=first.batch[0],
                            requests=first.batch[1])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # -- the dispatcher -----------------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            slot = await self.instances.acquire()
            try:
                batch = await self._gather()
            except BaseException:
                await self.instances.release(slot, counted=False)
                raise
            self._drop_cancelled()
            try:
                slot = self.instances.place(slot, alone=not self._queue)
            except BaseException:
                await self.instances.release(slot, counted=False)
                raise
            task = asyncio.create_task(self._run(batch, slot), name="batch-run")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather(self) -> list[_Chunk]:
        """Wait for the oldest request, then for more until the batch is full or the oldest waited max_delay."""
        while True:
            self._drop_cancelled()
            if self._queue:
                deadline = self._queue[0].enqueued + self.max_delay
                while self._queued_patches() < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), left)
                self._drop_cancelled()
                if self._queue:
                    return self._take()
            self._arrived.clear()
            await self._arrived.wait()

    def _queued_patches(self) -> int:
        total = 0
        for chunk in self._queue:
            total += len(chunk.patches)
            if total >= self.max_batch:
                break
        return total

    def _drop_cancelled(self) -> None:
        while self._queue and self._queue[0].future.done():
            self._consumed(self._queue.popleft())

    def _consumed(self, chunk: _Chunk) -> None:
        chunk.request.chunks_left -= 1
        if chunk.request.chunks_left == 0:
            self._queued_requests -= 1
            self.metrics.queued_requests.dec()

    def _take(self) -> list[_Chunk]:
        """Whole chunks in arrival order, as many as fit in max_batch (the first always fits)."""
        batch: list[_Chunk] = []
        size = 0
        now = time.perf_counter()
        while self._queue and size + len(self._queue[0].patches) <= self.max_batch:
            chunk = self._queue.popleft()
            self._consumed(chunk)
            if chunk.future.done():  # cancelled while queued
                continue
            batch.append(chunk)
            size += len(chunk.patches)
            chunk.dispatched = now
            self.metrics.queue_wait.observe(now - chunk.enqueued)
        return batch

    async def _run(self, batch: list[_Chunk], slot: int) -> None:
        try:
            try:
                probs = await anyio.to_thread.run_sync(self._predict, [c.patches for c in batch], slot,
                                                       limiter=self._threads)
            except Exception as exc:
                log.exception("a model run for %d requests failed", len(batch))
                for chunk in batch:
                    if not chunk.future.done():
                        chunk.future.set_exception(exc)
                return
            self.metrics.batch_requests.observe(len(batch))
            offset = 0
            for chunk in batch:
                n = len(chunk.patches)
                chunk.batch = (len(probs), len(batch))
                if not chunk.future.done():
                    chunk.future.set_result(probs[offset:offset + n])
                offset += n
        finally:
            await self.instances.release(slot)

    def _predict(self, parts: list[np.ndarray], slot: int) -> np.ndarray:
        """In the worker thread: the batch is assembled here (one copy), not on the event loop."""
        return self.instances.run(slot, parts[0] if len(parts) == 1 else np.concatenate(parts))
