"""What the service knows about the request it is working on: one `RequestRecord` per HTTP request, in a context
variable, so the layers that learn something about it write it down without being handed it.

The request middleware (service/observability.py) makes the record and binds it for the request's life; the
dataplane notes the model, version, routing, crop scheme, images and the pipeline's steps; the runners note how
long the request's patches queued and which batch they rode in (`note_run`); the error handlers note why a
request failed. At the end the middleware writes it as the request's log line (service/logs.py) and, with
tracing on, as the request span's attributes and child spans (service/tracing.py).

Step times are `time.perf_counter()` seconds; `wall_ns` turns them into the epoch nanoseconds spans take.
Standard library only: the runners import it, and `alexnet-eval` runs them without the web stack (nothing is
bound there, and every note is then a no-op).
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# Step names, in the order a request goes through them (the log line's timings and the trace's child spans).
STEPS = ("read", "preprocess", "queue", "inference", "postprocess")

# What a client's X-Request-ID may be: 1-128 characters of letters, digits and ._:/+=@- (UUIDs, ULIDs, Envoy's and
# most gateways' ids fit), so an id cannot inject anything into a log line or a header.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
REQUEST_ID_HEADER = "X-Request-ID"
# W3C trace context: version-traceid-parentid-flags; an all-zero trace id is invalid.
TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")

_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def wall_ns(perf_seconds: float) -> int:
    """A `time.perf_counter()` reading as nanoseconds since the epoch (what OpenTelemetry's spans take)."""
    return int(perf_seconds * 1e9) + _OFFSET_NS


def new_request_id() -> str:
    return uuid.uuid4().hex


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, None for none or a malformed one (the spec: ignore it)."""
    match = TRACEPARENT.fullmatch(traceparent.strip().lower()) if traceparent else None
    return match[1] if match and match[1] != "0" * 32 else None


@dataclass
class RequestRecord:
    request_id: str
    method: str = ""
    path: str = ""
    route: str | None = None  # the route template (/v2/models/{model}/infer), set once routed
    trace_id: str | None = None  # hex; the active span's with tracing on, else the client's traceparent's
    sticky_key: str | None = None  # the sticky-routing header's value (routes, never logged)
    model: str | None = None
    version: int | None = None
    routing: str | None = None  # how the version was chosen: explicit, default, split, sticky
    crops: str | None = None
    images: int | None = None
    status: int | None = None
    error: str | None = None  # why it failed (the detail its answer carries)
    reason: str | None = None
    shadows: list[int] = field(default_factory=list)  # versions a copy of it was sent to
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    steps: dict[str, tuple[float, float]] = field(default_factory=dict)  # step -> (start, end), perf_counter
    batch: dict[str, int] | None = None  # the first model run its patches went into: patches, requests
    run_end: float | None = None  # when the last model run with its patches ended

    def step(self, name: str, start: float, end: float) -> None:
        self.steps[name] = (start, max(start, end))

    def timings_ms(self) -> dict[str, float]:
        out = {name: round(1000 * (end - start), 3) for name, (start, end) in self.steps.items()}
        ordered = {name: out[name] for name in STEPS if name in out}
        if self.ended is not None:
            ordered["total"] = round(1000 * (self.ended - self.started), 3)
        return ordered

    def fields(self) -> dict[str, Any]:
        """The record as the log line's fields (None left out; never the sticky key)."""
        out: dict[str, Any] = {
            "request_id": self.request_id, "trace_id": self.trace_id, "method": self.method,
            "route": self.route or self.path, "status": self.status, "model": self.model, "version": self.version,
            "routing": self.routing, "crops": self.crops, "images": self.images,
            "shadow": self.shadows or None, "batch": self.batch, "error": self.error, "reason": self.reason,
        }
        out = {k: v for k, v in out.items() if v is not None}
        out["timings_ms"] = self.timings_ms()
        return out


_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("alexnet_request", default=None)


def current() -> RequestRecord | None:
    return _current.get()


def bind(record: RequestRecord | None) -> contextvars.Token:
    return _current.set(record)


def unbind(token: contextvars.Token) -> None:
    _current.reset(token)


def note_run(enqueued: float, started: float, finished: float, *, patches: int, requests: int) -> None:
    """A runner ran (part of) the current request's patches: they waited from `enqueued` to `started` and were
    run, with `patches` patches of `requests` requests in all, until `finished`. The first run is the request's
    queue step and its batch; a request split over several runs queues once."""
    record = _current.get()
    if record is None:
        return
    if "queue" not in record.steps:
        record.step("queue", enqueued, started)
        record.batch = {"patches": patches, "requests": requests}
    record.run_end = finished
