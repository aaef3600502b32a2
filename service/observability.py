"""The request middleware: every HTTP request gets its id, its record, its log line and (with tracing) its spans.

Pure ASGI, one place for all routes:

1. **X-Request-ID**: the client's, when it sends a valid one (1-128 of ``A-Z a-z 0-9 . _ : / + = @ -``), else
   a new one (32 hex digits). Every answer carries it back, errors included; a malformed one is answered 400
   (``{"detail": ...}``, or ``{"error": ...}`` under ``/v2``) with a new id, before anything else is done.
2. A `service.requestctx.RequestRecord` is bound for the request's life (what the dataplane, the runners and
   the error handlers note on it); the sticky-routing header (``ALEXNET_TRAFFIC_STICKY_HEADER``) goes on it for
   the traffic split, its value never into a log.
3. Its **trace id**: the active span's with tracing on (service/tracing.py: the FastAPI instrumentation is
   outside this middleware, so its span is current here), else the client's ``traceparent``'s, so logs can be
   joined to the client's traces even when this service does not export any.
4. At the end: the request's spans (tracing on; as the last of its answer is sent, since the instrumentation ends
   the server span then) and its one log line (service/logs.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request

from service import logs, requestctx
from service.error_handlers import error_response
from service.requestctx import REQUEST_ID, REQUEST_ID_HEADER, RequestRecord

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ID_HEADER = REQUEST_ID_HEADER.lower().encode()


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, sticky_header: str = "", tracing: Any = None, log_requests: bool = True
                 ) -> None:
        self.app = app
        self.sticky = sticky_header.lower().encode() if sticky_header else None
        self.tracing = tracing
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = traceparent = sticky = None
        for key, value in scope.get("headers", ()):
            if key == _ID_HEADER:
                given = value.decode("latin-1")
            elif key == b"traceparent":
                traceparent = value.decode("latin-1")
            elif self.sticky is not None and key == self.sticky:
                sticky = value.decode("latin-1").strip() or None
        valid = given is not None and REQUEST_ID.fullmatch(given) is not None
        record = RequestRecord(given if valid else requestctx.new_request_id(), method=scope.get("method", ""),
                               path=scope.get("path", ""), sticky_key=sticky)
        record.trace_id = (self.tracing.trace_id() if self.tracing is not None else None) \
            or requestctx.trace_id_of(traceparent)
        scope.setdefault("state", {})["request_id"] = record.request_id  # for the 500 handler, outside this one
        header = (_ID_HEADER, record.request_id.encode())
        traced = self.tracing is None

        async def send_with_id(message: Message) -> None:
            nonlocal traced
            if message["type"] == "http.response.start":
                record.status = int(message["status"])
                message["headers"] = [*(h for h in message.get("headers", []) if h[0].lower() != _ID_HEADER),
                                      header]
            elif message["type"] == "http.response.body" and not message.get("more_body") and not traced:
                traced = True  # the server span ends once this is sent: its children go on it now
                record.route = getattr(scope.get("route"), "path", None)
                self.tracing.finish(record)
            await send(message)

        token = requestctx.bind(record)
        try:
            if given is not None and not valid:
                shown = given if len(given) <= 40 else given[:40] + "..."
                response = error_response(Request(scope), 400, f"header '{REQUEST_ID_HEADER}': {shown!r} is not a "
                                          "request id: 1 to 128 letters, digits or ._:/+=@- characters",
                                          reason="request_id")
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if record.status is None:
                record.status = 500
                record.error = record.error or f"internal server error ({type(exc).__name__})"
            raise
        finally:
            record.ended = time.perf_counter()
            route = scope.get("route")
            record.route = getattr(route, "path", None)
            try:
                if not traced:  # no answer was sent (an exception): its span is still open
                    self.tracing.finish(record)
                if self.log_requests:
                    logs.log_request(record)
            finally:
                requestctx.unbind(token)
