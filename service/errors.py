"""The service's errors: each carries the HTTP status and the readable detail it leaves the service with.

Plain Python (no FastAPI), so the parts that run without the web stack — the pipeline, the runners, the
repository and `alexnet-eval`'s in-process backend — raise the same errors the routes answer with.
`service/error_handlers.py` turns them into JSON: ``{"detail": ...}`` on the service's own routes, ``{"error": ...}``
on the Open Inference Protocol's (``/v2``).

- `ServiceError` and its subclasses: raised by the service's own code with a status and a readable detail.
- `ImageError` (from preprocessing) is wrapped in `ImageRejected`, which names the file.
"""

from __future__ import annotations

from typing import Any

from service.preprocess import ImageError


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


class BadRequest(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    """No API key, or one that is not valid (service/auth.py)."""

    status = 401

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="alexnet-serving"'}, **extra)


class Forbidden(ServiceError):
    """A valid API key whose scope does not cover the route (an infer key on an admin route)."""

    status = 403


class NotFound(ServiceError):
    """An unknown model or version (or one that is not loaded)."""

    status = 404


class Conflict(ServiceError):
    status = 409


class UnsupportedMediaType(ServiceError):
    status = 415


class PayloadTooLarge(ServiceError):
    status = 413


class Unprocessable(ServiceError):
    status = 422


class ServiceUnavailable(ServiceError):
    """503 with Retry-After: a model is not ready yet, or the inference queue is full."""

    status = 503

    def __init__(self, detail: str, *, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(0, int(retry_after)))}, **extra)
        self.retry_after = retry_after


class NotReady(ServiceUnavailable):
    pass


class Overloaded(ServiceUnavailable):
    """Raised by an InferenceRunner whose queue is full."""


class ImageRejected(ServiceError):
    """One image could not be used; the status comes from the ImageError (400, 413, 415 or 422). `where` names the
    image as its transport does (``file 'cat.jpg'``, ``inputs[0] element 3``); `filename` is set for uploads."""

    def __init__(self, where: str, error: ImageError, filename: str | None = None) -> None:
        extra = {"filename": filename} if filename is not None else {}
        super().__init__(f"{where}: {error}", status=error.status, reason=error.reason, **extra)
        self.error = error
