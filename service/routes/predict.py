"""POST /predict: multipart images in, top-k classes per image out (the paper's 10-crop evaluation)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request

from service.errors import ImageRejected, ServiceError, Unprocessable
from service.preprocess import CROPS_PER_SCHEME, CropScheme, ImageError
from service.routes import get_state
from service.schemas import ErrorBody, ImageInfo, ImageResult, ModelRef, Prediction, PredictResponse, Timing
from service.state import ServiceState
from service.uploads import read_uploads

router = APIRouter(tags=["predict"])

# Reasons that are about a file (counted in images_rejected), not about the request as a whole.
_FILE_REASONS = {"too_large", "too_many_files", "empty", "unsupported", "too_many_pixels", "corrupt"}

_EXAMPLE = {
    "model": {"name": "alexnet", "version": 1},
    "crops": "ten",
    "top_k": 2,
    "provider": "CPUExecutionProvider",
    "results": [
        {"filename": "cat.jpg",
         "predictions": [{"index": 281, "label": "tabby", "id": "n02123045", "probability": 0.91},
                         {"index": 285, "label": "Egyptian cat", "id": "n02124075", "probability": 0.05}],
         "image": {"format": "JPEG", "width": 500, "height": 375}, "preprocess_ms": 6.2},
        {"filename": "dog.png",
         "predictions": [{"index": 207, "label": "golden retriever", "id": "n02099601", "probability": 0.77},
                         {"index": 208, "label": "Labrador retriever", "id": "n02099712", "probability": 0.12}],
         "image": {"format": "PNG", "width": 640, "height": 480}, "preprocess_ms": 9.8},
    ],
    "timing": {"read_ms": 0.9, "preprocess_ms": 10.3, "inference_ms": 141.0, "total_ms": 153.1},
}


def _error(description: str, detail: str, filename: str | None = None, reason: str | None = None) -> dict:
    body: dict = {"detail": detail}
    if filename:
        body["filename"] = filename
    if reason:
        body["reason"] = reason
    return {"model": ErrorBody, "description": description, "content": {"application/json": {"example": body}}}


_RESPONSES = {
    200: {"content": {"application/json": {"example": _EXAMPLE}}},
    400: _error("a file is corrupt or truncated, or the multipart body is malformed",
                "file 'cut.jpg': corrupt or truncated image: image file is truncated", "cut.jpg", "corrupt"),
    413: _error("a file or the request is too large, too many files, or too many pixels (decompression bomb)",
                "file 'huge.jpg' is larger than the limit of 20,971,520 bytes", "huge.jpg", "too_large"),
    415: _error("a file is not an image in a supported format, or the body is not multipart/form-data",
                "file 'notes.txt': not a supported image (accepted: JPEG, PNG, WEBP, BMP, GIF, TIFF)",
                "notes.txt", "unsupported"),
    422: _error("no file, an empty file, top_k out of range or an unknown crops value",
                "query parameter 'top_k': must be between 1 and 1000 (the model's classes), got 0"),
    503: _error("the model is still loading, or the service is overloaded (Retry-After is set)",
                "the model is still loading; retry shortly", reason="loading"),
}

_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                              "description": "one or more images (JPEG, PNG, WebP, BMP, GIF, TIFF), repeatable"},
                    "file": {"type": "string", "format": "binary",
                             "description": "a single image (alternative to 'files')"},
                },
            },
            "encoding": {"files": {"contentType": "image/*"}, "file": {"contentType": "image/*"}},
        }
    },
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Classify one or more images (top-k per image)",
    description=(
        "Upload images as multipart/form-data in the repeatable field `files` (or `file` for one). Each gets "
        "its top-k classes, softmax averaged over the ten patches of the paper (`crops=ten`) or from the "
        "single centre patch (`crops=center`). Results come in upload order; predictions highest first.\n\n"
        "All images of a request are classified together (in model runs shared with concurrent requests: "
        "dynamic batching). **One bad file fails the whole request** (4xx naming that file, nothing is "
        "classified): a request is all-or-nothing, so a client never has to match partial results to its files."
    ),
    responses=_RESPONSES,
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def predict(
    request: Request,
    state: Annotated[ServiceState, Depends(get_state)],
    top_k: Annotated[int, Query(ge=1, description="classes per image, 1..number of classes", examples=[5])] = 5,
    crops: Annotated[CropScheme, Query(description="`ten`: the paper's ten patches; `center`: the centre patch",
                                       examples=["ten"])] = "ten",
) -> PredictResponse:
    start = time.perf_counter()
    model, runner = state.require_ready()
    metrics = state.metrics
    num_classes = model.metadata.num_classes
    if top_k > num_classes:
        raise Unprocessable(
            f"query parameter 'top_k': must be between 1 and {num_classes} (the model's classes), got {top_k}",
            reason="top_k")

    try:
        uploads = await read_uploads(request, state.upload_limits)
    except ServiceError as exc:
        reason = exc.extra.get("reason")
        if reason in _FILE_REASONS:
            metrics.images_rejected.labels(reason).inc()
        raise
    read_done = time.perf_counter()
    metrics.request_images.observe(len(uploads))

    outcomes = await asyncio.gather(*(state.prepare(model, u.data, crops) for u in uploads), return_exceptions=True)
    for upload, outcome in zip(uploads, outcomes, strict=True):
        if isinstance(outcome, ImageError):  # the first bad file in upload order fails the request
            metrics.images_rejected.labels(outcome.reason).inc()
            raise ImageRejected(upload.filename, outcome)
        if isinstance(outcome, BaseException):
            raise outcome
    prepared_done = time.perf_counter()

    parts = [prepared.patches for prepared, _ in outcomes]
    patches = parts[0] if len(parts) == 1 else np.concatenate(parts)  # one image: no copy
    probs = await runner.infer(patches)
    inferred = time.perf_counter()

    n = CROPS_PER_SCHEME[crops]
    ids = [label.id for label in model.metadata.labels]
    results = []
    for i, (upload, (prepared, seconds)) in enumerate(zip(uploads, outcomes, strict=True)):
        top = model.postprocess(probs[i * n:(i + 1) * n], top_k)
        results.append(ImageResult(
            filename=upload.filename,
            predictions=[Prediction(index=p.index, label=p.label, id=ids[p.index], probability=p.probability)
                         for p in top],
            image=ImageInfo(format=prepared.format, width=prepared.width, height=prepared.height),
            preprocess_ms=round(1000 * seconds, 3),
        ))
    metrics.images.labels(crops).inc(len(uploads))
    done = time.perf_counter()
    return PredictResponse(
        model=ModelRef(name=model.metadata.name, version=model.metadata.version),
        crops=crops, top_k=top_k, provider=model.provider, results=results,
        timing=Timing(read_ms=round(1000 * (read_done - start), 3),
                      preprocess_ms=round(1000 * (prepared_done - read_done), 3),
                      inference_ms=round(1000 * (inferred - prepared_done), 3),
                      total_ms=round(1000 * (done - start), 3)),
    )
