"""Dependencies, named once (FastAPI's full-stack template): the per-app state, its repository, API keys.

The key checks are FastAPI security dependencies, so /docs shows both ways of sending a key (its "Authorize"
button) and every route declares what it needs in one place, its router (service/auth.py says which).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.app_state import ServiceState
from service.auth import Scope
from service.errors import Forbidden, Unauthorized
from service.repository import ModelRepository


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_repository(request: Request) -> ModelRepository:
    return request.app.state.service.repository


StateDep = Annotated[ServiceState, Depends(get_state)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]

_bearer = HTTPBearer(auto_error=False, description="an API key from ALEXNET_API_KEYS_FILE")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key, in a header of its own")


def require(scope: Scope, *, unless: str | None = None) -> Callable[..., Awaitable[None]]:
    """A dependency that lets a request through with a key of `scope` (or better) when API keys are on;
    `unless` names a boolean setting that, when false, leaves the route open even then."""

    async def check(state: StateDep,
                    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
                    header: Annotated[str | None, Security(_header)] = None) -> None:
        keys = state.api_keys
        if keys is None or (unless is not None and not getattr(state.settings, unless)):
            return
        key = bearer.credentials if bearer is not None else header
        if not key:
            raise Unauthorized("this route needs an API key: send 'Authorization: Bearer <key>' (or 'X-API-Key')",
                               reason="unauthorized")
        granted = keys.scope_of(key)
        if granted is None:
            raise Unauthorized("the API key is not valid", reason="unauthorized")
        if not keys.allows(granted, scope):
            raise Forbidden(f"this route needs an {scope} key; the key sent is an {granted} key", reason="forbidden")

    return check


InferKey = Depends(require("infer"))
AdminKey = Depends(require("admin"))
MetricsKey = Depends(require("infer", unless="metrics_require_key"))
DocsKey = Depends(require("infer", unless="docs_require_key"))
