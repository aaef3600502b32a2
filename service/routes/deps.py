"""Dependencies, named once (FastAPI's full-stack template): the per-app state and its repository."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.repository import ModelRepository
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_repository(request: Request) -> ModelRepository:
    return request.app.state.service.repository


StateDep = Annotated[ServiceState, Depends(get_state)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
