"""Every error leaves the service as JSON ``{"detail": "..."}`` (plus optional fields such as ``filename``).

- `ServiceError` and its subclasses: raised by the service's own code with a status and a readable detail.
- `ImageError` (from preprocessing) is wrapped in `ImageRejected`, which names the file.
- FastAPI's request validation errors become 422 with a one-line detail ("query parameter 'top_k': ...")
  and the raw list under ``errors``.
- Anything unexpected is a 500 with a generic detail; the traceback goes to the log, not to the client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.preprocess import ImageError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with the HTTP status and JSON body to answer with."""

    status: int = 400

    def __init__(self, detail: str, *, status: int | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, **self.extra}


class BadRequest(ServiceError):
    status = 400


class UnsupportedMediaType(ServiceError):
    status = 415


class PayloadTooLarge(ServiceError):
    status = 413


class Unprocessable(ServiceError):
    status = 422


class ServiceUnavailable(ServiceError):
    """503 with Retry-After: the model is not ready yet, or (later) the inference queue is full."""

    status = 503

    def __init__(self, detail: str, *, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(0, int(retry_after)))}, **extra)
        self.retry_after = retry_after


class NotReady(ServiceUnavailable):
    pass


class Overloaded(ServiceUnavailable):
    """Raised by an InferenceRunner whose queue is full."""


class ImageRejected(ServiceError):
    """One uploaded file could not be used; the status comes from the ImageError (400, 413, 415 or 422)."""

    def __init__(self, filename: str, error: ImageError) -> None:
        super().__init__(f"file {filename!r}: {error}", status=error.status, filename=filename,
                         reason=error.reason)
        self.error = error


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
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ImageError)
    async def _image_error(_request: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return JSONResponse({"detail": validation_detail(errors), "errors": _jsonable_errors(errors)},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
