"""The Open Inference Protocol (KServe v2 REST, as Triton implements it): server, model and inference endpoints.

Each endpoint translates its wire format only: the health answers come from the same functions as ``/health/*``,
the models from the repository, and ``infer`` goes through the same dataplane as ``POST /predict``
(service/dataplane.py: the request's lifecycle and rules; service/oip.py parses and encodes the tensors).
Errors are ``{"error": "..."}`` (service/error_handlers.py), with
the status codes ``/predict`` uses (400, 404, 413, 415, 503 with Retry-After).

The protocol's health endpoints (``/v2/health/*``) are in service/routes/health.py, beside the service's own
probes: they are open, where everything here needs an API key when keys are on.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response

from service.admission import Ticket
from service.app_state import ServiceState
from service.dataplane import Inputs
from service.errors import ServiceError
from service.oip import (
    EXTENSIONS,
    HEADER_LENGTH,
    PLATFORM,
    PROTOCOL_INPUT,
    PROTOCOL_INPUT_DATATYPE,
    PROTOCOL_OUTPUT,
    PROTOCOL_OUTPUT_DATATYPE,
    InferRequest,
    encode_infer_response,
    parse_infer_request,
)
from service.pipeline import Pipeline
from service.repository import ServedVersion
from service.routes.deps import InferKey, RepositoryDep, StateDep
from service.routes.health import not_ready
from service.schemas import (
    InferRequestBody,
    InferResponseBody,
    ModelReady,
    ServerMetadata,
    TensorMetadata,
    V2Error,
    V2ModelMetadata,
)
from service.server_info import SERVER_NAME, VERSION
from service.uploads import declared_length, read_body

router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[InferKey])

ModelName = Annotated[str, Path(description="model name", examples=["alexnet"])]
Version = Annotated[int, Path(ge=1, description="model version", examples=[2])]
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": V2Error} for code in (400, 401, 404, 413, 415, 503)}


@router.get("", response_model=ServerMetadata, summary="Server metadata: name, version, extensions")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=VERSION, extensions=list(EXTENSIONS))


# -- models ------------------------------------------------------------------------------------------------
def _metadata(served: ServedVersion, versions: list[int]) -> V2ModelMetadata:
    return V2ModelMetadata(
        name=served.entry.name, versions=[str(v) for v in versions], platform=PLATFORM,
        inputs=[TensorMetadata(name=PROTOCOL_INPUT, datatype=PROTOCOL_INPUT_DATATYPE, shape=[-1, 1])],
        outputs=[TensorMetadata(name=PROTOCOL_OUTPUT, datatype=PROTOCOL_OUTPUT_DATATYPE,
                                shape=[-1, served.pipeline.num_classes])])


@router.get("/models/{model}", response_model=V2ModelMetadata, summary="Model metadata", responses=ERRORS)
async def model_metadata(model: ModelName, repository: RepositoryDep) -> V2ModelMetadata:
    served = repository.resolve(model, None)
    return _metadata(served, sorted(repository.served.get(model, {})))


@router.get("/models/{model}/versions/{version}", response_model=V2ModelMetadata, summary="Model version metadata",
            responses=ERRORS)
async def version_metadata(model: ModelName, version: Version, repository: RepositoryDep) -> V2ModelMetadata:
    return _metadata(repository.resolve(model, version), [version])


async def _ready(state: ServiceState, model: str, version: int | None) -> Any:
    try:
        state.repository.resolve(model, version)
    except ServiceError as exc:
        if exc.status != 503:
            raise
        return not_ready(state, exc.detail, name=model)
    return ModelReady(name=model)


@router.get("/models/{model}/ready", response_model=ModelReady, summary="The model has a ready version",
            responses=ERRORS)
async def model_ready(model: ModelName, state: StateDep) -> Any:
    return await _ready(state, model, None)


@router.get("/models/{model}/versions/{version}/ready", response_model=ModelReady,
            summary="The model version is ready", responses=ERRORS)
async def version_ready(model: ModelName, version: Version, state: StateDep) -> Any:
    return await _ready(state, model, version)


def _config(state: ServiceState, served: ServedVersion) -> dict[str, Any]:
    """Triton's model configuration, with the fields its example clients read (max_batch_size, input, output)."""
    policy = state.repository.policies.for_model(served.entry.name)
    pre = served.pipeline.preprocessing
    version_policy = ({"latest": {"num_versions": policy.count}} if policy.kind == "latest" else
                      {"all": {}} if policy.kind == "all" else {"specific": {"versions": list(policy.versions)}})
    return {
        "name": served.entry.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": version_policy,
        "max_batch_size": state.settings.max_files_per_request,
        "input": [{"name": PROTOCOL_INPUT, "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}],
        "output": [{"name": PROTOCOL_OUTPUT, "data_type": "TYPE_FP32", "dims": [served.pipeline.num_classes]}],
        "parameters": {"crops": {"string_value": pre.crops}, "resize_size": {"string_value": str(pre.resize_size)},
                       "crop_size": {"string_value": str(pre.crop_size)}},
    }


@router.get("/models/{model}/config", summary="Model configuration (Triton's)", responses=ERRORS)
async def model_config(model: ModelName, state: StateDep) -> dict[str, Any]:
    return _config(state, state.repository.resolve(model, None))


@router.get("/models/{model}/versions/{version}/config", summary="Model version configuration (Triton's)",
            responses=ERRORS)
async def version_config(model: ModelName, version: Version, state: StateDep) -> dict[str, Any]:
    return _config(state, state.repository.resolve(model, version))


# -- inference ---------------------------------------------------------------------------------------------
_INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": InferRequestBody.model_json_schema(ref_template="#/components/schemas/{model}"),
                "example": {"inputs": [{"name": PROTOCOL_INPUT, "datatype": "BYTES", "shape": [1],
                                        "data": ["<base64 of a JPEG file>"]}],
                            "outputs": [{"name": PROTOCOL_OUTPUT, "parameters": {"classification": 5}}],
                            "parameters": {"crops": "ten"}},
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                         "description": f"binary tensor data extension: {HEADER_LENGTH} bytes of "
                                                        "JSON, then the inputs' binary data"},
        },
    },
}


async def _infer(request: Request, state: ServiceState, model: str, version: int | None) -> Response:
    settings = state.settings
    parsed: InferRequest | None = None

    async def read(_pipeline: Pipeline, ticket: Ticket) -> Inputs:
        nonlocal parsed
        body = await read_body(request, state.upload_limits, ticket)
        parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH),
                                     max_images=settings.max_files_per_request, max_image_bytes=settings.max_file_bytes)
        top_k, field = parsed.classification
        return Inputs(parsed.images, [f"inputs[0] element {i}" for i in range(len(parsed.images))],
                      crops=parsed.crops, top_k=top_k, top_k_field=field)

    answer = await state.dataplane.infer(model, version, declared_length(request, state.upload_limits), read)
    assert parsed is not None
    images = answer.result.images
    scheme = answer.scheme
    probabilities = np.stack([image.schemes[scheme].probabilities for image in images])
    content, headers = encode_infer_response(
        parsed, model_name=answer.result.name, model_version=answer.result.version, probabilities=probabilities,
        top=[image.schemes[scheme].top for image in images], parameters={"crops": scheme})
    return Response(content, headers=headers)


_INFER = {"response_model": InferResponseBody, "responses": ERRORS, "openapi_extra": _INFER_DOC}


@router.post("/models/{model}/infer", summary="Classify encoded images (the model's default version)", **_INFER)
async def infer(request: Request, model: ModelName, state: StateDep) -> Response:
    return await _infer(request, state, model, None)


@router.post("/models/{model}/versions/{version}/infer", summary="Classify encoded images with one version",
             **_INFER)
async def infer_version(request: Request, model: ModelName, version: Version, state: StateDep) -> Response:
    return await _infer(request, state, model, version)
