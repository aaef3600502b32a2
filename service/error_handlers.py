"""How every error leaves the service: JSON, with the status its exception carries, never a traceback.

Two body shapes, chosen by the path alone:
- the service's own routes: ``{"detail": "...", ...}`` (plus ``filename``/``reason`` where they apply);
- the Open Inference Protocol's routes (``/v2`` and below): ``{"error": "..."}``, the shape its clients
  (tritonclient, KServe's) read the message from.

FastAPI's request validation errors become 422 with a one-line detail ("query parameter 'top_k': ...") and,
on the own routes, the raw list under ``errors``. Anything unexpected is a 500 with a generic message; the
traceback goes to the log, not to the client.

Every error answer carries the request's ``X-Request-ID`` (the 500 too, which Starlette answers outside the
request middleware), and its detail goes on the request's record, so the request's log line says why it failed.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import requestctx
from service.errors import ServiceError
from service.preprocess import ImageError

log = logging.getLogger(__name__)

V2_PREFIX = "/v2"


def is_v2(request: Request) -> bool:
    path = request.url.path
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def error_response(request: Request, status: int, detail: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    body = {"error": detail} if is_v2(request) else {"detail": detail, **extra}
    record = requestctx.current()
    if record is not None:
        record.error, record.reason = detail, extra.get("reason")
    request_id = request.scope.get("state", {}).get("request_id")  # set by service/observability.py
    if request_id:
        headers = {**(headers or {}), requestctx.REQUEST_ID_HEADER: request_id}
    return JSONResponse(body, status_code=status, headers=headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] in ("query", "path", "header", "cookie"):
        return f"{parts[0]} parameter {'.'.join(parts[1:])!r}"
    if parts and parts[0] == "body":
        return "request body" + (f" field {'.'.join(parts[1:])!r}" if len(parts) > 1 else "")
    return ".".join(parts) or "request"


def validation_detail(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors) or "invalid request"


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        item = {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        if "input" in e and isinstance(e["input"], str | int | float | bool | None):
            item["input"] = e["input"]
        out.append(item)
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request, exc.status, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
        return error_response(request, exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return error_response(request, 422, validation_detail(errors), errors=_jsonable_errors(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(request, exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal server error")
