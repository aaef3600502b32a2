"""POST /predict: multipart images in, top-k classes per image out (the paper's 10-crop evaluation).

Wire format only: the uploads become the dataplane's `Inputs`, its `Answer` becomes `PredictResponse`; the
request's lifecycle and rules are service/dataplane.py's.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Annotated, Literal

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Query, Request
from PIL import Image

from alexnet_store.vocabulary import CropScheme
from service import pipeline as pl
from service.admission import Ticket
from service.dataplane import Inputs
from service.errors import Unprocessable
from service.gallery import Hits, LoadedGallery
from service.preprocess import patch_boxes
from service.routes.deps import InferKey, StateDep
from service.schemas import (
    ErrorBody,
    GalleryRef,
    ImageInfo,
    ImageResult,
    ModelRef,
    Neighbour,
    PatchDetails,
    PatchResult,
    Prediction,
    PredictResponse,
    Timing,
)
from service.uploads import declared_length, read_uploads

router = APIRouter(tags=["predict"], dependencies=[InferKey])

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


# details=patches&square=true: the square as JPEG at this quality. Measured over the 100 photos of
# ../shared/data/imagenet-samples on the 2-core AMD EPYC of the README: 0.29 ms per image (encode + base64,
# median; 0.33 ms p90) and a 21.7 KB data URL (median; 37 KB max); quality 75 saves 5 KB, 90 costs 5 KB more.
SQUARE_JPEG_QUALITY = 85


def square_data_url(square: np.ndarray) -> str:
    """The square the patches were cut from, as a JPEG data URL a browser shows as it is."""
    buf = io.BytesIO()
    Image.fromarray(square).save(buf, "JPEG", quality=SQUARE_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _predictions(top: tuple[pl.Prediction, ...]) -> list[Prediction]:
    return [Prediction(index=p.index, label=p.label, id=p.id, probability=p.probability) for p in top]


def patch_details(pipeline: pl.Pipeline, image: pl.ClassifiedImage, scheme: CropScheme, top_k: int,
                  square_jpeg: str | None, features: bool = False) -> PatchDetails:
    """Each patch's own top-k, from the per-patch softmax rows of the run the average was taken over (and, with
    `features`, each patch's own features from the same run)."""
    pre = pipeline.preprocessing
    result = image.schemes[scheme]
    rows = result.patch_probabilities
    vectors = result.patch_features if features and result.patch_features is not None else [None] * len(rows)
    boxes = patch_boxes(pre.resize_size, pre.crop_size, scheme)
    return PatchDetails(square_size=pre.resize_size, square_jpeg=square_jpeg, patches=[
        PatchResult(name=box.name, box=list(box.box), flipped=box.flipped,
                    predictions=_predictions(pipeline.top_k(row, top_k)),
                    features=None if vector is None else vector.tolist())
        for box, row, vector in zip(boxes, rows, vectors, strict=True)])


def _neighbours(gallery: LoadedGallery, hits: Hits) -> list[Neighbour]:
    """One image's gallery neighbours, nearest first, with their thumbnails as data URLs (96×96 JPEG, ~3 KB)."""
    out = []
    for position, distance in zip(hits.positions.tolist(), hits.distances.tolist(), strict=True):
        item = gallery.items[position]
        thumb = gallery.thumbnail(position)
        out.append(Neighbour(position=position, file=item.file, label=item.label, predicted=item.predicted,
                             distance=distance, thumbnail=None if thumb is None else
                             "data:image/jpeg;base64," + base64.b64encode(thumb).decode("ascii")))
    return out


def _error(description: str, detail: str, filename: str | None = None, reason: str | None = None) -> dict:
    body: dict = {"detail": detail}
    if filename:
        body["filename"] = filename
    if reason:
        body["reason"] = reason
    return {"model": ErrorBody, "description": description, "content": {"application/json": {"example": body}}}


_RESPONSES = {
    200: {"content": {"application/json": {"example": _EXAMPLE}}},
    413: _error("a file or the request is too large, too many files, or too many pixels (decompression bomb)",
                "file 'huge.jpg' is larger than the limit of 20,971,520 bytes", "huge.jpg", "too_large"),
    415: _error("a file is not an image in a supported format, or the body is not multipart/form-data",
                "file 'notes.txt': not a supported image (accepted: JPEG, PNG, WEBP, BMP, GIF, TIFF)",
                "notes.txt", "unsupported"),
    404: _error("no such model, the version asked for is not loaded, or neighbours asked of a version without a "
                "gallery (reason no_gallery)",
                "version 1 of model 'alexnet' is not served (unavailable: not selected by the version policy "
                "latest:1; loaded: [2])", reason="version_not_served"),
    400: _error("a file is corrupt or truncated, the multipart body is malformed, or features / neighbours were "
                "asked of a version exported without a features output",
                "file 'cut.jpg': corrupt or truncated image: image file is truncated", "cut.jpg", "corrupt"),
    422: _error("no file, an empty file, top_k out of range, an unknown crops or details value, square=true without "
                "details=patches, neighbours above the gallery's size, or no model named where the service serves "
                "several",
                "query parameter 'top_k': must be between 1 and 1000 (the model's classes), got 0"),
    503: _error("the model is still loading, or the service is overloaded: too much in flight, or too many "
                "requests waiting for the model (Retry-After is set)",
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
        "single centre patch (`crops=center`). Results come in upload order; predictions highest first. "
        "`model` and `version` choose what answers (default: the only model, its newest loaded version); the "
        "answer names the model and version that produced it.\n\n"
        "All images of a request are classified together (in model runs shared with concurrent requests: "
        "dynamic batching). **One bad file fails the whole request** (4xx naming that file, nothing is "
        "classified): a request is all-or-nothing, so a client never has to match partial results to its files."
        "\n\n"
        "`details=patches` adds to each image the patches the model ran (`details.patches`: name, box in the "
        "square they are cut from, flipped or not) with **each patch's own top-k**, taken from the same model run "
        "as the average (nothing is run twice); `square=true` adds that square as a JPEG data URL "
        "(`details.square_jpeg`). The page at `/` shows them.\n\n"
        "`features=true` adds each image's features (`features`: the version's penultimate layer, AlexNet's 4096 "
        "fc7 activations after ReLU, averaged over the patches; with `details=patches` each patch's own too); "
        "`neighbours=k` adds the k gallery images nearest to it by Euclidean distance of those features "
        "(`neighbours`, nearest first, and `gallery`: the paper's Fig. 4; `alexnet-index build` makes the "
        "gallery). A version exported without features answers 400 (`no_features`), one without a gallery 404 "
        "(`no_gallery`)."
    ),
    responses=_RESPONSES,
    openapi_extra={"requestBody": _REQUEST_BODY},
    response_model_exclude_none=True,
)
async def predict(
    request: Request,
    state: StateDep,
    top_k: Annotated[int, Query(ge=1, description="classes per image, 1..number of classes", examples=[5])] = 5,
    crops: Annotated[CropScheme | None, Query(
        description="`ten`: the paper's ten patches; `center`: the centre patch; default: the model's own scheme "
                    "(its metadata's `preprocessing.crops`)", examples=["ten"])] = None,
    model: Annotated[str | None, Query(description="model name; may be omitted when the service serves one model",
                                       examples=["alexnet"])] = None,
    version: Annotated[int | None, Query(ge=1, description="model version; default: the newest loaded one",
                                         examples=[2])] = None,
    details: Annotated[Literal["patches"] | None, Query(
        description="`patches`: also each image's patches (name, box in the square, flipped) with each patch's "
                    "own top-k, from the same model run as the average", examples=["patches"])] = None,
    square: Annotated[bool, Query(
        description="with `details=patches`: also the square the patches are cut from, as a JPEG data URL "
                    "(about 22 KB and 0.3 ms per image)", examples=[True])] = False,
    features: Annotated[bool, Query(
        description="also each image's features (the version's penultimate layer, averaged over the patches; per "
                    "patch too with details=patches)", examples=[True])] = False,
    neighbours: Annotated[int, Query(
        ge=0, description="also the k nearest gallery images of each image (0: none; at most the gallery's size and "
                          "ALEXNET_SEARCH_MAX_NEIGHBOURS)", examples=[5])] = 0,
) -> PredictResponse:
    start = time.perf_counter()
    if square and details != "patches":
        raise Unprocessable("query parameter 'square': needs details=patches (the square is the frame of the patches' "
                            "boxes)", reason="square")

    async def read(_pipeline: pl.Pipeline, ticket: Ticket) -> Inputs:
        uploads = await read_uploads(request, state.upload_limits, ticket)
        return Inputs([u.data for u in uploads], [f"file {u.filename!r}" for u in uploads], crops=crops, top_k=top_k,
                      top_k_field="query parameter 'top_k'", filenames=[u.filename for u in uploads],
                      features=features, neighbours=neighbours, neighbours_field="query parameter 'neighbours'")

    answer = await state.dataplane.infer(model, version, declared_length(request, state.upload_limits), read)
    pipeline, result, scheme = answer.pipeline, answer.result, answer.scheme
    filenames = answer.inputs.filenames or []
    jpegs: list[str | None] = [None] * len(result.images)
    if square:  # off the event loop, like the decoding
        jpegs = await anyio.to_thread.run_sync(lambda: [square_data_url(i.square) for i in result.images],
                                               limiter=pipeline.decode_limiter)
    results = [
        ImageResult(
            filename=filename,
            predictions=_predictions(image.schemes[scheme].top),
            image=ImageInfo(format=image.format, width=image.width, height=image.height),
            preprocess_ms=round(1000 * image.preprocess_seconds, 3),
            details=patch_details(pipeline, image, scheme, top_k, jpeg, features) if details == "patches" else None,
            features=image.schemes[scheme].features.tolist() if features else None,
            neighbours=_neighbours(answer.gallery, hits) if hits is not None else None,
        )
        for filename, image, jpeg, hits in zip(filenames, result.images, jpegs, answer.hits or [None] * len(filenames),
                                               strict=True)
    ]
    gallery = answer.gallery
    done = time.perf_counter()
    return PredictResponse(
        model=ModelRef(name=result.name, version=result.version), crops=scheme, top_k=top_k,
        provider=result.provider, results=results,
        gallery=None if gallery is None else GalleryRef(generation=gallery.generation, size=gallery.count,
                                                        search=gallery.kind),
        timing=Timing(read_ms=round(1000 * answer.read_seconds, 3),
                      preprocess_ms=round(1000 * result.preprocess_seconds, 3),
                      inference_ms=round(1000 * result.inference_seconds, 3),
                      total_ms=round(1000 * (done - start), 3)),
    )
