"""The repository's models and versions: metadata, state, and the execution provider each actually runs on."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from fastapi import APIRouter

from service.app_state import ServiceState
from service.repository import ModelRepository, VersionStatus
from service.routes.deps import InferKey, StateDep
from service.schemas import ErrorBody, ModelList, ServedModel

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[InferKey])


def redact_paths(value: Any) -> Any:
    """Metadata with every absolute path cut to its last part: where a checkpoint or a calibration folder lay on
    the exporting machine is nobody's business over HTTP (older exports recorded such paths in `source`)."""
    if isinstance(value, dict):
        return {k: redact_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_paths(v) for v in value]
    if isinstance(value, str):
        if value.startswith("/"):
            return PurePosixPath(value).name
        if PureWindowsPath(value).is_absolute():
            return PureWindowsPath(value).name
    return value


def describe(state: ServiceState, status: VersionStatus) -> ServedModel:
    repository: ModelRepository = state.repository
    served = repository.served.get(status.name, {}).get(status.version)
    common = {"name": status.name, "version": status.version, "state": status.state, "reason": status.reason,
              "default": status.default, "path": f"{status.name}/{status.version}",
              "requested_providers": state.requested_providers, "available_providers": state.available_providers()}
    if served is None:
        return ServedModel(ready=False, **common)
    meta = served.entry.metadata
    return ServedModel(ready=True, provider=served.model.provider, num_classes=meta.num_classes,
                       load_seconds=round(served.load_seconds, 3), memory_bytes=served.memory_bytes,
                       metadata=redact_paths(meta.to_dict()), **common)


@router.get("", response_model=ModelList, summary="Every model and version the repository knows, with its state")
async def list_models(state: StateDep) -> ModelList:
    return ModelList(models=[describe(state, s) for s in state.repository.index()])


@router.get("/{name}", response_model=ServedModel, summary="A model's default version (its newest loaded one)",
            responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def get_model(name: str, state: StateDep) -> ServedModel:
    served = state.repository.resolve(name, None)
    return describe(state, state.repository.status(name, served.entry.version))


@router.get("/{name}/versions/{version}", response_model=ServedModel, summary="One version of a model",
            responses={404: {"model": ErrorBody}})
async def get_version(name: str, version: int, state: StateDep) -> ServedModel:
    statuses = [s for s in state.repository.index(name) if s.version == version]
    if not statuses:
        state.repository.resolve(name, version)  # raises the 404 that says what is there
    return describe(state, statuses[0])
