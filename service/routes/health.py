"""Liveness and readiness: answered on the event loop, so they stay fast while images are processed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.errors import ServiceUnavailable
from service.routes import get_state
from service.schemas import ErrorBody, Live, ModelRef, Ready
from service.state import ServiceState

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=Live, summary="The process is up",
            responses={503: {"model": ErrorBody, "description": "the model failed to load"}})
async def live(state: Annotated[ServiceState, Depends(get_state)]) -> Live:
    if state.state == "failed":
        raise ServiceUnavailable(f"the model failed to load: {state.error}", reason="load_failed")
    return Live()


@router.get("/ready", response_model=Ready, summary="The model is loaded and warmed up",
            responses={503: {"model": ErrorBody, "description": "still loading (or failed); Retry-After is set"}})
async def ready(state: Annotated[ServiceState, Depends(get_state)]) -> Ready:
    model, _runner = state.require_ready()
    return Ready(model=ModelRef(name=model.metadata.name, version=model.metadata.version), provider=model.provider)
