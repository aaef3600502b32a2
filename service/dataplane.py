"""The dataplane: one request's life, and the rules every transport obeys, in one place.

KServe's split (``kserve/protocol/dataplane.py`` beside ``rest/v1_endpoints.py``): a transport decodes its wire
format into `Inputs` and encodes the `Answer` back; everything between is here, written once for ``POST
/predict`` (service/routes/predict.py) and the Open Inference Protocol's ``infer`` (service/routes/v2.py):

1. an **admission ticket** for the bytes the request declares (503 at once when too much is in flight);
2. a **lease** on the model version asked for (or the model's default), held until the answer is computed, so a
   rollover lets the request finish on the version it started on;
3. the transport's **reader** turns the body into `Inputs` (images, crop scheme, top-k); a file that the reader
   refuses (too large, too many) is counted in ``alexnet_images_rejected_total`` like a file that fails to decode;
4. the **rules**: ``top_k`` between 1 and the model's classes, the **crop scheme** defaulting to the model's own
   (its metadata's ``preprocessing.crops``), the images charged to the ticket before any is decoded;
5. the version's `Pipeline` (decode → patches → batch → run → average → top-k);
6. **all or nothing**: the first image that could not be used, in request order, fails the request, named the
   way the transport names its images (``file 'cat.jpg'``, ``inputs[0] element 3``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from alexnet_store.vocabulary import CropScheme
from service.admission import Admission, Ticket
from service.errors import ImageRejected, ServiceError, Unprocessable
from service.metrics import Metrics
from service.pipeline import Pipeline, PipelineResult
from service.repository import ModelRepository

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


@dataclass(frozen=True)
class Answer:
    pipeline: Pipeline
    inputs: Inputs
    scheme: CropScheme
    result: PipelineResult
    read_seconds: float  # from admission to the decoded inputs


Reader = Callable[[Pipeline, Ticket], Awaitable[Inputs]]


class DataPlane:
    def __init__(self, repository: ModelRepository, admission: Admission, metrics: Metrics) -> None:
        self.repository = repository
        self.admission = admission
        self.metrics = metrics

    @staticmethod
    def check_top_k(pipeline: Pipeline, top_k: int, field: str) -> None:
        if not 1 <= top_k <= pipeline.num_classes:
            raise Unprocessable(f"{field}: must be between 1 and {pipeline.num_classes} (the model's classes), "
                                f"got {top_k}", reason="top_k")

    async def infer(self, model: str | None, version: int | None, declared_bytes: int | None,
                    read: Reader) -> Answer:
        start = time.perf_counter()
        with self.admission.ticket(declared_bytes) as ticket:
            async with self.repository.lease(model, version) as served:
                pipeline = served.pipeline
                try:
                    inputs = await read(pipeline, ticket)
                except ServiceError as exc:
                    reason = exc.extra.get("reason")
                    if reason in FILE_REASONS:
                        self.metrics.images_rejected.labels(reason).inc()
                    raise
                if inputs.top_k:
                    self.check_top_k(pipeline, inputs.top_k, inputs.top_k_field)
                read_seconds = time.perf_counter() - start
                self.metrics.request_images.observe(len(inputs.images))
                ticket.charge_images(len(inputs.images))
                scheme = inputs.crops or pipeline.preprocessing.crops
                result = await pipeline(inputs.images, schemes=(scheme,), top_k=inputs.top_k)
        bad = result.first_error()
        if bad is not None:  # the first bad image in request order fails the request
            filename = inputs.filenames[bad.position] if inputs.filenames else None
            raise ImageRejected(inputs.names[bad.position], bad.error, filename=filename)
        return Answer(pipeline, inputs, scheme, result, read_seconds)
