"""The dataplane: one request's life, and the rules every transport obeys, in one place.

KServe's split (``kserve/protocol/dataplane.py`` beside ``rest/v1_endpoints.py``): a transport decodes its wire
format into `Inputs` and encodes the `Answer` back; everything between is here, written once for ``POST
/predict`` (service/routes/predict.py) and the Open Inference Protocol's ``infer`` (service/routes/v2.py):

1. an **admission ticket** for the bytes the request declares (503 at once when too much is in flight);
2. a **lease** on the model version asked for, or, when the request names none, the one its model's traffic
   split routes it to (service/traffic.py: by weight, keyed by the sticky header or the request id), else the
   model's default; held until the answer is computed, so a rollover lets the request finish on the version it
   started on;
3. the transport's **reader** turns the body into `Inputs` (images, crop scheme, top-k); a file that the reader
   refuses (too large, too many) is counted in ``alexnet_images_rejected_total`` like a file that fails to decode;
4. the **rules**: ``top_k`` between 1 and the model's classes, the **crop scheme** defaulting to the model's own
   (its metadata's ``preprocessing.crops``), the images charged to the ticket before any is decoded;
5. the version's `Pipeline` (decode → patches → batch → run → average → top-k);
6. **all or nothing**: the first image that could not be used, in request order, fails the request, named the
   way the transport names its images (``file 'cat.jpg'``, ``inputs[0] element 3``);
7. **shadow copies**: a routed request that answered is copied to the model's shadow versions that its id
   selects (service/shadow.py: run after the answer, never failing it, shed first under load).

**Features and search** (issue 20, the paper's section 6.1): a request may ask for the version's features (its
penultimate layer, from the same run as the probabilities: `Inputs.features`) or for each image's nearest gallery
images (`Inputs.neighbours` = k). Both are refused before anything is decoded when the version cannot answer them:
400 (``reason: no_features``) for a version exported without a features output, 404 (``no_gallery``) for one without
a gallery, 422 for a k outside 1 … min(gallery size, `max_neighbours`). The search runs after the pipeline, on the
images' features averaged over their patches, in the version's newest gallery generation (service/gallery.py).

Each request is counted and timed per version (``alexnet_version_requests_total{model, version, code}``,
``alexnet_version_request_duration_seconds``), and its model, version, routing, crop scheme, images and step
timings are noted on its `service.requestctx.RequestRecord` (its log line and trace).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio.to_thread
import numpy as np

from alexnet_store.vocabulary import CropScheme
from service import requestctx
from service.admission import Admission, Ticket
from service.errors import BadRequest, ImageRejected, NotFound, ServiceError, ServiceUnavailable, Unprocessable
from service.gallery import GalleryError, Hits, LoadedGallery
from service.metrics import Metrics
from service.pipeline import Pipeline, PipelineResult
from service.repository import ModelRepository
from service.shadow import Shadows

# Reasons that are about one file (counted in images_rejected), not about the request as a whole.
FILE_REASONS = frozenset({"too_large", "too_many_files", "empty", "unsupported", "too_many_pixels", "corrupt"})


@dataclass(frozen=True)
class Inputs:
    """What a transport decoded from its request."""

    images: list[bytes]
    names: list[str]  # how the transport names each image in an error: "file 'cat.jpg'", "inputs[0] element 3"
    crops: CropScheme | None = None  # None: the model's own scheme
    top_k: int = 0  # classes to rank per image; 0: none (the transport wants the probabilities only)
    top_k_field: str = "top_k"  # how the transport names top_k in an error ("query parameter 'top_k'")
    filenames: list[str] | None = None  # the uploads' file names, which errors carry as `filename`
    features: bool = False  # the transport answers with the features (the version must have them)
    neighbours: int = 0  # the k nearest gallery images of each image; 0: no search
    neighbours_field: str = "k"  # how the transport names k in an error


@dataclass(frozen=True)
class Answer:
    pipeline: Pipeline
    inputs: Inputs
    scheme: CropScheme
    result: PipelineResult
    read_seconds: float  # from admission to the decoded inputs
    gallery: LoadedGallery | None = None  # the generation searched (with neighbours)
    hits: list[Hits] | None = None  # per image, its neighbours in `gallery`, nearest first


Reader = Callable[[Pipeline, Ticket], Awaitable[Inputs]]


class DataPlane:
    def __init__(self, repository: ModelRepository, admission: Admission, metrics: Metrics,
                 shadows: Shadows | None = None, *, max_neighbours: int) -> None:
        """`max_neighbours`: the most gallery images one search returns per image (Settings.search_max_neighbours,
        where its default lives)."""
        self.repository = repository
        self.admission = admission
        self.metrics = metrics
        self.shadows = shadows
        self.max_neighbours = max_neighbours

    @staticmethod
    def check_top_k(pipeline: Pipeline, top_k: int, field: str) -> None:
        if not 1 <= top_k <= pipeline.num_classes:
            raise Unprocessable(f"{field}: must be between 1 and {pipeline.num_classes} (the model's classes), "
                                f"got {top_k}", reason="top_k")

    @staticmethod
    def check_features(pipeline: Pipeline) -> None:
        if pipeline.features is None:
            raise BadRequest(f"model {pipeline.name!r} version {pipeline.version} has no features output (its "
                             "metadata names no onnx.features: it was exported before features existed); export it "
                             "again with alexnet-export to get features or search a gallery", reason="no_features")

    async def gallery(self, pipeline: Pipeline) -> LoadedGallery:
        """The version's newest gallery generation: NotFound without one, 503 if it cannot be loaded."""
        try:
            gallery = await pipeline.gallery.current()
        except GalleryError as exc:
            raise ServiceUnavailable(f"model {pipeline.name!r} version {pipeline.version}: {exc}", retry_after=1,
                                     reason="gallery_unavailable") from exc
        if gallery is None:
            raise NotFound(f"model {pipeline.name!r} version {pipeline.version} has no gallery: build one with "
                           f"'alexnet-index build DIR --model {pipeline.name} --version {pipeline.version}'",
                           reason="no_gallery")
        return gallery

    def check_neighbours(self, gallery: LoadedGallery, k: int, field: str) -> None:
        most = min(gallery.count, self.max_neighbours)
        if not 1 <= k <= most:
            raise Unprocessable(f"{field}: must be between 1 and {most} (the gallery's {gallery.count} images, at "
                                f"most {self.max_neighbours}), got {k}", reason="neighbours")

    async def infer(self, model: str | None, version: int | None, declared_bytes: int | None,
                    read: Reader) -> Answer:
        start = time.perf_counter()
        record = requestctx.current()
        if record is not None and record.sticky_key:
            key, sticky = record.sticky_key, True
        else:
            key, sticky = (record.request_id if record is not None else requestctx.new_request_id()), False
        with self.admission.ticket(declared_bytes) as ticket:
            route = self.repository.route(model, version, key, sticky=sticky)
            served = route.served
            name, number = served.entry.name, served.entry.version
            if record is not None:
                record.model, record.version, record.routing = name, number, route.how
            code = 500
            try:
                async with self.repository.hold(served):
                    answer = await self._run(served.pipeline, ticket, read, start, record)
                code = 200
            except ServiceError as exc:
                code = exc.status
                raise
            finally:
                self.metrics.version_requests.labels(name, str(number), str(code)).inc()
                self.metrics.version_latency.labels(name, str(number)).observe(time.perf_counter() - start)
        if self.shadows is not None and route.how != "explicit":
            rule = self.repository.traffic.rule(name)
            versions = rule.shadows(name, record.request_id if record is not None else key, number) \
                if rule.shadow else []
            if versions:
                top1 = [int(image.schemes[answer.scheme].probabilities.argmax()) for image in answer.result.images]
                started = self.shadows.mirror(name, versions, answer.inputs.images, answer.scheme, top1)
                if record is not None:
                    record.shadows = started
        return answer

    async def _run(self, pipeline: Pipeline, ticket: Ticket, read: Reader, start: float,
                   record: requestctx.RequestRecord | None) -> Answer:
        try:
            inputs = await read(pipeline, ticket)
        except ServiceError as exc:
            reason = exc.extra.get("reason")
            if reason in FILE_REASONS:
                self.metrics.images_rejected.labels(reason).inc()
            raise
        if inputs.top_k:
            self.check_top_k(pipeline, inputs.top_k, inputs.top_k_field)
        gallery = None
        if inputs.features or inputs.neighbours:
            self.check_features(pipeline)
        if inputs.neighbours:
            gallery = await self.gallery(pipeline)
            self.check_neighbours(gallery, inputs.neighbours, inputs.neighbours_field)
        read_end = time.perf_counter()
        read_seconds = read_end - start
        self.metrics.request_images.observe(len(inputs.images))
        ticket.charge_images(len(inputs.images))
        scheme = inputs.crops or pipeline.preprocessing.crops
        if record is not None:
            record.crops, record.images = scheme, len(inputs.images)
            record.step("read", start, read_end)
        called = time.perf_counter()
        result = await pipeline(inputs.images, schemes=(scheme,), top_k=inputs.top_k)
        if record is not None:
            note_steps(record, called, result)
        bad = result.first_error()
        if bad is not None:  # the first bad image in request order fails the request
            filename = inputs.filenames[bad.position] if inputs.filenames else None
            raise ImageRejected(inputs.names[bad.position], bad.error, filename=filename)
        hits = None
        if gallery is not None:
            searched = time.perf_counter()
            queries = np.stack([image.schemes[scheme].features for image in result.images])
            hits = await anyio.to_thread.run_sync(gallery.search, queries, inputs.neighbours)
            if record is not None:
                record.step("search", searched, time.perf_counter())
        return Answer(pipeline, inputs, scheme, result, read_seconds, gallery, hits)


def note_steps(record: requestctx.RequestRecord, called: float, result: PipelineResult) -> None:
    """The pipeline's steps on the request's record: preprocess, queue (the runner's note, when its patches waited
    for a batch), inference (the run, and any wait between a split request's runs), postprocess."""
    preprocessed = called + result.preprocess_seconds
    inferred = preprocessed + result.inference_seconds
    record.step("preprocess", called, preprocessed)
    if result.inference_seconds > 0 or "queue" in record.steps:
        queue = record.steps.get("queue")
        run_start = min(max(queue[1], preprocessed), inferred) if queue else preprocessed
        if queue:
            record.step("queue", max(queue[0], preprocessed), run_start)
        record.step("inference", run_start, inferred)
    record.step("postprocess", inferred, inferred + result.postprocess_seconds)
