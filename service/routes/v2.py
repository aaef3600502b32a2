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

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response

from alexnet_store import ModelMetadata
from service.admission import Ticket
from service.app_state import ServiceState
from service.dataplane import Inputs
from service.errors import NotFound, ServiceError, ServiceUnavailable
from service.gallery import GalleryError
from service.kernels import DEFAULT_SCALE, MAX_SCALE, NoKernels, kernels_png
from service.oip import (
    EXTENSIONS,
    HEADER_LENGTH,
    PLATFORM,
    PROTOCOL_FEATURES,
    PROTOCOL_INPUT,
    PROTOCOL_INPUT_DATATYPE,
    PROTOCOL_OUTPUT,
    PROTOCOL_OUTPUT_DATATYPE,
    SEARCH_DEFAULT_OUTPUTS,
    SEARCH_OUTPUTS,
    InferRequest,
    encode_infer_response,
    encode_tensors,
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
def model_parameters(metadata: ModelMetadata) -> dict[str, str | int | float]:
    """A version's preprocessing and source as the protocol's scalar parameters: what a client that cuts its own
    patches needs, and where the weights came from (`source` "torchvision" or "onnx" for an imported model, with the
    arch and weights enum or the file's sha256; "exported" for a network trained or initialised here)."""
    pre, imported = metadata.preprocessing, metadata.imported
    params: dict[str, str | int | float] = {
        "crops": pre.crops, "resize_size": pre.resize_size, "crop_size": pre.crop_size,
        "interpolation": pre.interpolation, "input_channels": pre.input_channels, "channel_order": pre.channel_order,
        "pixel_range": pre.pixel_range, "mean": ",".join(f"{v:g}" for v in pre.mean),
        "std": ",".join(f"{v:g}" for v in pre.std), "output_kind": metadata.onnx.output_kind,
        "source": imported.kind if imported is not None else "exported"}
    if imported is not None:
        for key in ("file", "sha256", "arch", "weights", "preset", "top1", "top5"):
            if (value := getattr(imported, key)) is not None:
                params[f"source_{key}"] = value
    return params


def _features_metadata(served: ServedVersion) -> list[TensorMetadata]:
    """The features output, for a version that has one (metadata onnx.features)."""
    features = served.pipeline.features
    return [] if features is None else [TensorMetadata(name=PROTOCOL_FEATURES, datatype=PROTOCOL_OUTPUT_DATATYPE,
                                                       shape=[-1, features.dim])]


def _metadata(served: ServedVersion, versions: list[int]) -> V2ModelMetadata:
    return V2ModelMetadata(
        name=served.entry.name, versions=[str(v) for v in versions], platform=PLATFORM,
        inputs=[TensorMetadata(name=PROTOCOL_INPUT, datatype=PROTOCOL_INPUT_DATATYPE, shape=[-1, 1])],
        outputs=[TensorMetadata(name=PROTOCOL_OUTPUT, datatype=PROTOCOL_OUTPUT_DATATYPE,
                                shape=[-1, served.pipeline.num_classes]), *_features_metadata(served)],
        parameters=model_parameters(served.entry.metadata))


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
    version_policy = ({"latest": {"num_versions": policy.count}} if policy.kind == "latest" else
                      {"all": {}} if policy.kind == "all" else {"specific": {"versions": list(policy.versions)}})
    return {
        "name": served.entry.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": version_policy,
        "max_batch_size": state.settings.max_files_per_request,
        "input": [{"name": PROTOCOL_INPUT, "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}],
        "output": [{"name": PROTOCOL_OUTPUT, "data_type": "TYPE_FP32", "dims": [served.pipeline.num_classes]},
                   *({"name": PROTOCOL_FEATURES, "data_type": "TYPE_FP32", "dims": [t.shape[1]]}
                     for t in _features_metadata(served))],
        "parameters": {k: {"string_value": str(v)} for k, v in model_parameters(served.entry.metadata).items()},
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
                      crops=parsed.crops, top_k=top_k, top_k_field=field, features=parsed.features)

    answer = await state.dataplane.infer(model, version, declared_length(request, state.upload_limits), read)
    assert parsed is not None
    images = answer.result.images
    scheme = answer.scheme
    results = [image.schemes[scheme] for image in images]
    probabilities = np.stack([r.probabilities for r in results])
    features = patch_features = None
    if parsed.features:
        features = np.stack([r.features for r in results])
        patch_features = np.stack([r.patch_features for r in results])
    content, headers = encode_infer_response(
        parsed, model_name=answer.result.name, model_version=answer.result.version, probabilities=probabilities,
        top=[r.top for r in results], parameters={"crops": scheme}, features=features, patch_features=patch_features)
    return Response(content, headers=headers)


_INFER = {"response_model": InferResponseBody, "responses": ERRORS, "openapi_extra": _INFER_DOC}


@router.post("/models/{model}/infer", summary="Classify encoded images (the model's default version)", **_INFER)
async def infer(request: Request, model: ModelName, state: StateDep) -> Response:
    return await _infer(request, state, model, None)


@router.post("/models/{model}/versions/{version}/infer", summary="Classify encoded images with one version",
             **_INFER)
async def infer_version(request: Request, model: ModelName, version: Version, state: StateDep) -> Response:
    return await _infer(request, state, model, version)


# -- gallery search and kernels (issue 20: the paper's section 6.1) --------------------------------------------
_SEARCH_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": InferRequestBody.model_json_schema(ref_template="#/components/schemas/{model}"),
                "example": {"inputs": [{"name": PROTOCOL_INPUT, "datatype": "BYTES", "shape": [1],
                                        "data": ["<base64 of a JPEG file>"]}],
                            "outputs": [{"name": n} for n in SEARCH_DEFAULT_OUTPUTS],
                            "parameters": {"k": 5}},
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                         "description": f"binary tensor data extension: {HEADER_LENGTH} bytes of "
                                                        "JSON, then the inputs' binary data"},
        },
    },
}
_SEARCH_DESCRIPTION = (
    "The paper's Fig. 4: for each image, the k gallery images whose features (the version's penultimate layer, "
    "averaged over the crop scheme's patches) are nearest in Euclidean distance, nearest first. The body is an "
    "infer request (input `image`); `parameters.k` (default 5) neighbours per image; outputs (default all but "
    f"`thumbnails`): {', '.join(f'`{n}`' for n in SEARCH_OUTPUTS)}. The answer is in the infer response's format "
    "(tritonclient's `InferResult` reads it), with `parameters` naming the gallery generation searched, its size and "
    "whether the search was exact. 400 for a version without features, 404 for one without a gallery "
    "(`alexnet-index build`), 422 for a k above the gallery's size or ALEXNET_SEARCH_MAX_NEIGHBOURS.")


def _search_tensor(name: str, answer, hits) -> tuple[str, np.ndarray]:
    gallery = answer.gallery
    k = answer.inputs.neighbours
    if name == "neighbours":
        return "INT64", np.stack([h.positions for h in hits]).astype(np.int64)
    if name == "distances":
        return "FP32", np.stack([h.distances for h in hits]).astype(np.float32)
    rows = []
    for h in hits:
        items = [gallery.items[int(p)] for p in h.positions]
        if name == "thumbnails":
            rows.append([gallery.thumbnail(int(p)) or b"" for p in h.positions])
        else:
            rows.append([{"labels": i.label, "predicted": i.predicted, "files": i.file}[name] for i in items])
    return "BYTES", np.array(rows, dtype=object).reshape(len(hits), k)


async def _search(request: Request, state: ServiceState, model: str, version: int | None) -> Response:
    settings = state.settings
    parsed: InferRequest | None = None

    async def read(_pipeline: Pipeline, ticket: Ticket) -> Inputs:
        nonlocal parsed
        body = await read_body(request, state.upload_limits, ticket)
        parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), search=True,
                                     max_images=settings.max_files_per_request, max_image_bytes=settings.max_file_bytes)
        return Inputs(parsed.images, [f"inputs[0] element {i}" for i in range(len(parsed.images))],
                      crops=parsed.crops, neighbours=parsed.k, neighbours_field="parameters.k")

    answer = await state.dataplane.infer(model, version, declared_length(request, state.upload_limits), read)
    assert parsed is not None and answer.gallery is not None and answer.hits is not None
    gallery = answer.gallery
    tensors = [(spec, *_search_tensor(spec.name, answer, answer.hits)) for spec in parsed.outputs]
    content, headers = encode_tensors(parsed, tensors, model_name=answer.result.name,
                                      model_version=answer.result.version,
                                      parameters={"crops": answer.scheme, "k": parsed.k,
                                                  "gallery_generation": gallery.generation,
                                                  "gallery_size": gallery.count, "search": gallery.kind})
    return Response(content, headers=headers)


_SEARCH = {"response_model": InferResponseBody, "responses": ERRORS, "openapi_extra": _SEARCH_DOC,
           "description": _SEARCH_DESCRIPTION}


@router.post("/models/{model}/search", summary="The nearest gallery images of encoded images (default version)",
             **_SEARCH)
async def search(request: Request, model: ModelName, state: StateDep) -> Response:
    return await _search(request, state, model, None)


@router.post("/models/{model}/versions/{version}/search", summary="The nearest gallery images, one version",
             **_SEARCH)
async def search_version(request: Request, model: ModelName, version: Version, state: StateDep) -> Response:
    return await _search(request, state, model, version)


Scale = Annotated[int, Query(ge=1, le=MAX_SCALE, description="pixels per weight", examples=[DEFAULT_SCALE])]
_KERNELS = {
    "response_class": Response,
    "responses": {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                        "description": "the first convolution's kernels, as a PNG"},
                  **{code: ERRORS[code] for code in (401, 404, 503)}},
    "description": (
        "The paper's Fig. 3: the first convolution's kernels, read from the version's ONNX file. The paper's "
        "AlexNet (grouped) in two rows of 48, the kernels of each half that conv2 sees separately (the paper's two "
        "GPUs); other networks in a square grid. Each kernel is min-max scaled to 0..255 on its own (its channels "
        "together), each weight drawn as `scale`×`scale` pixels, 2 pixels between kernels on white "
        "(service/kernels.py states the mapping). 404 when the first layer is not a convolution."),
}


async def _kernels(state: ServiceState, model: str, version: int | None, scale: int) -> Response:
    served = state.repository.resolve(model, version)
    entry = served.entry
    meta = entry.metadata
    try:
        png = await anyio.to_thread.run_sync(
            kernels_png, str(entry.onnx_path), meta.onnx.sha256, bool(meta.architecture.grouped),
            meta.preprocessing.channel_order == "BGR", scale)
    except NoKernels as exc:
        raise NotFound(f"model {entry.name!r} version {entry.version}: no kernels to draw: {exc}",
                       reason="no_kernels") from exc
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@router.get("/models/{model}/kernels.png", summary="The first convolution's kernels as a picture (Fig. 3)",
            **_KERNELS)
async def kernels(model: ModelName, state: StateDep, scale: Scale = DEFAULT_SCALE) -> Response:
    return await _kernels(state, model, None, scale)


@router.get("/models/{model}/versions/{version}/kernels.png", summary="One version's first-layer kernels (Fig. 3)",
            **_KERNELS)
async def kernels_version(model: ModelName, version: Version, state: StateDep,
                          scale: Scale = DEFAULT_SCALE) -> Response:
    return await _kernels(state, model, version, scale)


# -- what a version can answer about section 6.1: its features and its gallery ----------------------------------
async def _gallery_info(state: ServiceState, model: str, version: int | None) -> dict[str, Any]:
    served = state.repository.resolve(model, version)
    pipeline = served.pipeline
    features = pipeline.features
    info: dict[str, Any] = {
        "name": served.entry.name, "version": served.entry.version,
        "features": None if features is None else {"name": PROTOCOL_FEATURES, "dim": features.dim,
                                                   "layer": features.layer},
        "gallery": None}
    if features is None:
        return info
    try:
        gallery = await pipeline.gallery.current()
    except GalleryError as exc:
        raise ServiceUnavailable(f"model {served.entry.name!r} version {served.entry.version}: {exc}",
                                 retry_after=1, reason="gallery_unavailable") from exc
    if gallery is not None:
        spec = gallery.manifest.index
        info["gallery"] = {"generation": gallery.generation, "size": gallery.count, "dim": gallery.dim,
                           "crops": gallery.manifest.crops, "search": gallery.kind, "library": spec.library,
                           "recall_at_10": spec.recall_at_10, "created_at": gallery.manifest.created_at,
                           "max_neighbours": min(gallery.count, state.dataplane.max_neighbours)}
    return info


_GALLERY = {"responses": {code: ERRORS[code] for code in (401, 404, 503)}, "description": (
    "Whether the version has a features output (its penultimate layer) and a gallery to search, always 200 for a "
    "served version: `features` null for a version exported without them, `gallery` null when none was built "
    "(`alexnet-index build`); otherwise the newest generation, its size, exact (`flat`) or approximate (`hnsw`, "
    "with the recall@10 measured at build) search, and the largest k a search may ask for. The page reads it before "
    "it asks for neighbours.")}


@router.get("/models/{model}/gallery", summary="The features and gallery of the default version", **_GALLERY)
async def gallery_info(model: ModelName, state: StateDep) -> dict[str, Any]:
    return await _gallery_info(state, model, None)


@router.get("/models/{model}/versions/{version}/gallery", summary="The features and gallery of one version",
            **_GALLERY)
async def gallery_info_version(model: ModelName, version: Version, state: StateDep) -> dict[str, Any]:
    return await _gallery_info(state, model, version)
