"""Liveness and readiness: answered on the event loop, so they stay fast while images are processed.

The service's own probes (``/health/*``) and the Open Inference Protocol's (``/v2/health/*``, in v2.py)
answer from the same two functions, `is_live` and the repository's `ready`.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.errors import ServiceUnavailable
from service.routes.deps import StateDep
from service.schemas import ErrorBody, Live, Ready, ServedRef
from service.state import ServiceState

router = APIRouter(prefix="/health", tags=["health"])


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
