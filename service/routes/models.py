"""The served model: its metadata and the execution provider the ONNX Runtime session actually uses."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.errors import NotReady, ServiceError
from service.routes import get_state
from service.schemas import ErrorBody, ModelList, ServedModel
from service.state import ServiceState

router = APIRouter(prefix="/v1/models", tags=["models"])


def _served(state: ServiceState) -> ServedModel:
    version = state.version if state.model is None else state.model.version
    if version is None:  # still resolving the store, or the store itself is broken
        if state.state == "failed":
            raise NotReady(f"the model failed to load: {state.error}", reason="load_failed")
        raise NotReady("the model is still loading; retry shortly", reason="loading")
    model = state.model
    meta = version.metadata
    return ServedModel(
        name=meta.name, version=meta.version, ready=state.ready, state=state.state,
        provider=model.provider if model is not None and model.ready else None,
        requested_providers=state.requested_providers, available_providers=state.available_providers(),
        num_classes=meta.num_classes, path=str(version.path), metadata=meta.to_dict(),
    )


@router.get("", response_model=ModelList, summary="The served model, its metadata and active provider",
            responses={503: {"model": ErrorBody}})
async def list_models(state: Annotated[ServiceState, Depends(get_state)]) -> ModelList:
    return ModelList(models=[_served(state)])


@router.get("/{name}", response_model=ServedModel, summary="One served model by name",
            responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def get_model(name: str, state: Annotated[ServiceState, Depends(get_state)]) -> ServedModel:
    served = _served(state)
    if served.name != name:
        raise ServiceError(f"model {name!r} is not served here (this service serves {served.name!r})", status=404)
    return served
