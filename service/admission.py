"""Admission control: a bound on what the service holds at once, checked before any work is done for a request.

Without it, memory grows with the load *offered*: every upload is received, parsed and decoded before the
batcher's bounded queue can say 503, so 96 concurrent requests of 8 small JPEGs took the process from 0.66 GB
to 2.6 GB (issue #13). Here each request takes a `Ticket` first, and holds it until its answer is built:

- **bytes**: its body, charged from ``Content-Length`` before a byte of it is read (a body sent without one is
  charged chunk by chunk as it streams in);
- **images**: charged once the upload is parsed, before any of them is decoded.

If the request would take the service over ``max_inflight_bytes`` or ``max_inflight_images``, it is answered
503 with ``Retry-After`` at once, having cost next to nothing. A request alone is always admitted (nothing
else in flight), so a limit smaller than one request slows big requests down but never refuses them forever.

The defaults are sized from the memory the process may use (the cgroup limit in a container, else the
machine's): 1/32 of it for bytes (at most 256 MiB) and one image per 12 MiB of that 1/32 (16 to 128 images).
An admitted image costs about 6 MB while it is in flight — its upload, a decoded copy no larger than the resize
needs (JPEG draft), its 256² square, its ten patches and their copies into the request's and the run's batch —
and the model's own working memory grows by ~0.45-0.8 GB for a run of 80 patches. Measured with
`python -m bench.stress burst` (64 clients × 8 photos of 12 megapixels): 188 images in flight peaked at idle +
1.84 GB, 96 at + 1.51 GB, 64 at + 1.40 GB (docs/api.md).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from service.errors import Overloaded
from service.metrics import Metrics

MIB = 1024 * 1024


def memory_limit() -> int:
    """Bytes this process may use: the cgroup's limit when there is one (containers), else physical memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = Path(path).read_text().strip()
            if text != "max" and int(text) < 1 << 60:  # cgroup v1 says "no limit" with a huge number
                return int(text)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def default_limits(memory: int | None = None) -> tuple[int, int]:
    """(max in-flight bytes, max in-flight images) for this much memory."""
    share = (memory if memory is not None else memory_limit()) // 32
    return max(32 * MIB, min(256 * MIB, share)), max(16, min(128, share // (12 * MIB)))


class Admission:
    def __init__(self, *, max_bytes: int, max_images: int, retry_after: int = 1, metrics: Metrics | None = None
                 ) -> None:
        self.max_bytes, self.max_images = max_bytes, max_images
        self.retry_after = retry_after
        self.metrics = metrics
        self.last_end = time.monotonic()  # when a request last ended: how long the service has been idle
        self.bytes = 0
        self.images = 0
        self.requests = 0

    @contextlib.contextmanager
    def ticket(self, declared_bytes: int | None = None) -> Iterator[Ticket]:
        """Hold a request's share until the block ends; Overloaded (503) at once if its body does not fit."""
        ticket = Ticket(self)
        self.requests += 1
        try:
            if declared_bytes:
                ticket.charge_bytes(declared_bytes)
            yield ticket
        finally:
            ticket.release()
            self.requests -= 1
            self.last_end = time.monotonic()

    def _refuse(self, what: str, asked: int, held: int, limit: int) -> Overloaded:
        if self.metrics is not None:
            self.metrics.admission_rejected.labels(what).inc()
        return Overloaded(f"the service is holding {held:,} {what} of requests in flight (limit {limit:,}); this "
                          f"request's {asked:,} more must wait: retry shortly", retry_after=self.retry_after,
                          reason="overloaded")

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.inflight_bytes.set(self.bytes)
            self.metrics.inflight_images.set(self.images)


class Ticket:
    """One request's share of the budget; charges are checked as they come and all given back at the end."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.bytes = 0
        self.images = 0

    def _alone(self) -> bool:
        a = self.admission
        return a.bytes == self.bytes and a.images == self.images

    def _charge(self, resource: str, count: int) -> None:
        a = self.admission
        held, limit = getattr(a, resource), getattr(a, f"max_{resource}")
        if held + count > limit and not self._alone():
            raise a._refuse(resource, count, held, limit)
        setattr(a, resource, held + count)
        setattr(self, resource, getattr(self, resource) + count)
        a._publish()

    def charge_bytes(self, count: int) -> None:
        self._charge("bytes", count)

    def received(self, total: int) -> None:
        """The body has reached `total` bytes: charge what goes beyond what was charged already."""
        if total > self.bytes:
            self.charge_bytes(total - self.bytes)

    def charge_images(self, count: int) -> None:
        self._charge("images", count)

    def release(self) -> None:
        a = self.admission
        a.bytes -= self.bytes
        a.images -= self.images
        self.bytes = self.images = 0
        a._publish()
