"""Triton's model repository extension: the index, and explicit load and unload of a model.

    POST /v2/repository/index                   every model and version, with its state and reason
    POST /v2/repository/models/{name}/load      load the model now by its version policy (again trying
                                                versions that failed); 200 once a version serves
    POST /v2/repository/models/{name}/unload    stop serving it once its requests finish; polling leaves it
                                                unloaded until the next load
    GET  /v2/repository/models/{name}/traffic   the model's traffic split and shadows (service/traffic.py)
    POST /v2/repository/models/{name}/traffic   replace them (an admin key): {"split": {"3": 90, "4": 10},
                                                "shadow": {"5": 25}}; {} clears both

With several workers each has its own repository, so load, unload and a traffic change answer 409 there
(polling keeps the workers in step instead; ALEXNET_TRAFFIC / ALEXNET_SHADOW set every worker's traffic).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path

from service.app_state import ServiceState
from service.errors import BadRequest, ServiceError, Unprocessable
from service.repository import VersionStatus
from service.routes.deps import AdminKey, InferKey, StateDep
from service.schemas import IndexEntry, TrafficRule, TrafficState, V2Error
from service.traffic import Rule

router = APIRouter(prefix="/v2/repository", tags=["repository"])

ModelName = Annotated[str, Path(description="model name", examples=["alexnet"])]
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": V2Error} for code in (400, 401, 403, 404, 409)}


def _entries(statuses: list[VersionStatus]) -> list[IndexEntry]:
    return [IndexEntry(name=s.name, version=str(s.version), state=s.state, reason=s.reason) for s in statuses]


@router.post("/index", response_model=list[IndexEntry], summary="Every model and version, with its state",
             responses={code: ERRORS[code] for code in (400, 401)}, dependencies=[InferKey])
async def index(state: StateDep, body: Annotated[dict[str, Any] | None, Body(
        examples=[{"ready": True}], description='`{"ready": true}`: only the versions that are READY')] = None,
                ) -> list[IndexEntry]:
    statuses = state.repository.index()
    if body and body.get("ready"):
        statuses = [s for s in statuses if s.state == "READY"]
    return _entries(statuses)


@router.post("/models/{name}/load", summary="Load a model now (by its version policy)", responses=ERRORS,
             dependencies=[AdminKey])
async def load(name: ModelName, state: StateDep) -> dict[str, Any]:
    state.require_control()
    try:
        await state.repository.load(name)
    except ServiceError as exc:
        if exc.status == 503:  # Triton answers a model that will not load with 400
            raise BadRequest(exc.detail, reason="load_failed") from exc
        raise
    return {}


@router.post("/models/{name}/unload", summary="Unload every version of a model once its requests finish",
             responses=ERRORS, dependencies=[AdminKey])
async def unload(name: ModelName, state: StateDep) -> dict[str, Any]:
    state.require_control()
    await state.repository.unload(name)
    return {}


def _traffic(state: ServiceState, name: str) -> TrafficState:
    repository = state.repository
    rule = repository.traffic.rule(name)
    loaded = repository.served.get(name, {})
    default = repository.default_version(name)
    as_set = rule.to_dict()
    return TrafficState(name=name, split=as_set["split"], shadow=as_set["shadow"],
                        effective={str(v): f for v, f in rule.effective(loaded).items()},
                        default=default.entry.version if default is not None else None,
                        sticky_header=state.settings.traffic_sticky_header or None)


@router.get("/models/{name}/traffic", response_model=TrafficState, summary="A model's traffic split and shadows",
            responses={code: ERRORS[code] for code in (401, 404)}, dependencies=[InferKey])
async def get_traffic(name: ModelName, state: StateDep) -> TrafficState:
    state.repository.require_known(name)
    return _traffic(state, name)


@router.post("/models/{name}/traffic", response_model=TrafficState,
             summary="Replace a model's traffic split and shadows (versions that are loaded)",
             responses={**ERRORS, 422: {"model": V2Error}}, dependencies=[AdminKey])
async def set_traffic(name: ModelName, state: StateDep, body: TrafficRule) -> TrafficState:
    state.require_control()
    try:
        rule = Rule.of(body.split, body.shadow, f"model {name!r}")
    except ValueError as exc:
        raise Unprocessable(str(exc), reason="traffic") from exc
    state.repository.set_traffic(name, rule)
    return _traffic(state, name)
