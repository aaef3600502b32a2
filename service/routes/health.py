"""Liveness and readiness: answered on the event loop, so they stay fast while images are processed.

The service's own probes (``/health/*``) and the Open Inference Protocol's (``/v2/health/*``, in v2.py)
answer from the same two functions, `is_live` and the repository's `ready`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.app_state import ServiceState
from service.errors import ServiceUnavailable
from service.routes.deps import StateDep
from service.schemas import ErrorBody, Live, Ready, ServedRef, V2Error, V2Live, V2Ready

ERRORS: dict[int | str, dict[str, Any]] = {503: {"model": V2Error}}

router = APIRouter(prefix="/health", tags=["health"])
v2_router = APIRouter(prefix="/v2/health", tags=["v2", "health"])  # the Open Inference Protocol's probes


def is_live(state: ServiceState) -> bool:
    """False only for a process that can never serve on its own: nothing loaded, loading is over and polling
    is off (with polling, a version published later can still be loaded)."""
    repository = state.repository
    return not (repository.started and not repository.served and repository.poll_seconds == 0)


def require_live(state: ServiceState) -> None:
    if not is_live(state):
        raise ServiceUnavailable(f"nothing can be served: {state.repository.not_ready_reason()}",
                                 retry_after=state.settings.retry_after_seconds, reason="load_failed")


@router.get("/live", response_model=Live, summary="The process is up",
            responses={503: {"model": ErrorBody, "description": "no model loaded and none will be (polling is off)"}})
async def live(state: StateDep) -> Live:
    require_live(state)
    return Live()


@router.get("/ready", response_model=Ready, summary="Every served model has a loaded, warmed-up version",
            responses={503: {"model": ErrorBody, "description": "still loading (or failed); Retry-After is set"}})
async def ready(state: StateDep) -> Ready:
    state.require_ready()
    repository = state.repository
    refs = []
    for name in sorted(repository.served):
        served = repository.default_version(name)
        if served is not None:
            refs.append(ServedRef(name=name, version=served.entry.version, provider=served.model.provider))
    return Ready(models=refs)


# -- the Open Inference Protocol's probes: both answers carry the status code *and* the body, because the stock
# clients disagree on which they read: tritonclient looks at the status, KServe's client at {"ready": ...}.
@v2_router.get("/live", response_model=V2Live, summary="The server is live", responses=ERRORS)
async def server_live(state: StateDep) -> V2Live:
    require_live(state)
    return V2Live()


def not_ready(state: ServiceState, reason: str, **body: Any) -> JSONResponse:
    return JSONResponse({**body, "ready": False, "error": reason}, status_code=503,
                        headers={"Retry-After": str(state.settings.retry_after_seconds)})


@v2_router.get("/ready", response_model=V2Ready, summary="Every served model has a ready version",
               responses=ERRORS)
async def server_ready(state: StateDep) -> Any:
    if not state.repository.ready:
        return not_ready(state, state.repository.not_ready_reason())
    return V2Ready()
