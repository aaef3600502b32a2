"""The one composition of a classification: decode → patches → batch → run → average → top-k.

KServe's `Model.__call__` is the pattern: `preprocess`, `predict` and `postprocess` are separate steps, each
timed (``alexnet_pipeline_step_seconds{model, step}``), composed once in `Pipeline.__call__`. Every transport
calls it and only translates its own wire format:

- ``POST /predict`` (multipart uploads → the service's JSON), service/routes/predict.py, and
  ``POST /v2/models/{m}/infer`` (Open Inference Protocol tensors → probabilities or Triton's classification
  strings), service/routes/v2.py, both through the request lifecycle of service/dataplane.py;
- `alexnet-eval`'s in-process backend (files on disk → top-5 per crop scheme), service/evaluation/backends.py.

Every `Pipeline` is assembled by `PipelineFactory` (the repository's versions, `alexnet-eval`'s in-process model):
a version's model is opened, given its runner (the dynamic batcher, or one run per request) and wrapped, from one
`PipelineConfig`. The service builds that config from its `Settings` (`Settings.pipeline_config`), `alexnet-eval`
from its flags; neither this module nor the runners hold defaults of their own.

The steps:

1. **preprocess** — each image is decoded, resized and cut into the patches of every crop scheme asked for
   (one decode for several schemes: `alexnet-eval --crops both`), in worker threads bounded by the decode
   limiter (Pillow releases the GIL). A file that cannot be used becomes that image's `ImageError`; with
   ``all_or_nothing`` (the HTTP transports: a request is all or nothing) the model is then not run at all.
2. **predict** — the patches of all images and schemes are concatenated and handed to the version's
   `InferenceRunner` in one call; the dynamic batcher may run them together with other requests' patches, and
   splits calls larger than its maximum batch.
3. **postprocess** — the rows are split back per image and scheme; the softmax probabilities (computed in
   the serving graph) are averaged over each scheme's patches, and the top-k are taken. A version with a features
   output (its penultimate layer, issue 20) returns it from the same run, in the same rows (service/model.py): the
   features are averaged over the patches the same way, and kept per patch too.

Nothing here imports FastAPI: `alexnet-eval` runs the same pipeline where only ONNX Runtime is installed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.to_thread
import numpy as np

from alexnet_store import ModelVersion
from alexnet_store.vocabulary import CropScheme
from service.batching import BatchingRunner
from service.gallery import GalleryHandle
from service.metrics import Metrics
from service.model import ClassifierModel, RuntimeOptions, output_width
from service.preprocess import DecodeLimits, ImageError, PreparedImage, prepare_image
from service.runner import InferenceRunner, ThreadRunner
from service.session import Prepare, run_here


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    id: str
    probability: float


@dataclass(frozen=True)
class SchemeResult:
    """One image under one crop scheme."""

    probabilities: np.ndarray  # float32 [K]: the softmax averaged over the scheme's patches
    patch_probabilities: np.ndarray  # float32 [n, K]: each patch's softmax, from the same run
    top: tuple[Prediction, ...]  # the top-k of `probabilities`, highest first
    features: np.ndarray | None = None  # float32 [D]: the penultimate layer averaged over the patches (None: none)
    patch_features: np.ndarray | None = None  # float32 [n, D]: each patch's, from the same run


@dataclass(frozen=True)
class ClassifiedImage:
    """One image: its results per scheme, or the `error` that kept it from the model."""

    position: int  # in the request
    preprocess_seconds: float
    format: str | None = None
    width: int | None = None
    height: int | None = None
    schemes: dict[str, SchemeResult] | None = None
    error: ImageError | None = None
    square: np.ndarray | None = None  # uint8 [S, S, 3]: the square its patches were cut from (for details=patches)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class PipelineResult:
    name: str
    version: int
    provider: str
    images: list[ClassifiedImage]  # in request order
    preprocess_seconds: float
    inference_seconds: float  # waiting for and running the model
    postprocess_seconds: float

    def first_error(self) -> ClassifiedImage | None:
        return next((image for image in self.images if not image.ok), None)


class Pipeline:
    """A loaded model version, the runner that batches its model runs, and the steps around them."""

    def __init__(self, model: ClassifierModel, runner: InferenceRunner, *, limits: DecodeLimits,
                 decode_limiter: anyio.CapacityLimiter | None, metrics: Metrics | None) -> None:
        self.model = model
        self.runner = runner
        self.limits = limits
        self.decode_limiter = decode_limiter
        self.metrics = metrics
        meta = model.metadata
        self.name, self.version = meta.name, meta.version
        self.preprocessing = meta.preprocessing
        self.labels = meta.labels
        self.num_classes = meta.num_classes
        self.features = meta.onnx.features  # what the features output is (None: the version has none)
        self.gallery = GalleryHandle(model.version.path)  # its image gallery, read when a search asks (lazily)

    # -- the steps ---------------------------------------------------------------------------------------------
    def prepare(self, data: bytes, schemes: Sequence[CropScheme]) -> PreparedImage:
        """One encoded image → its patches per scheme (synchronous; called in a worker thread)."""
        pre = self.preprocessing
        return prepare_image(data, schemes, pre.resize_size, pre.crop_size, self.limits, pre.interpolation)

    async def preprocess(self, images: Sequence[bytes],
                         schemes: Sequence[CropScheme]) -> list[tuple[PreparedImage | ImageError, float]]:
        """Every image decoded in parallel worker threads: (patches or the reason it failed, seconds it took)."""

        def work(data: bytes) -> tuple[PreparedImage | ImageError, float]:
            start = time.perf_counter()
            try:
                prepared: PreparedImage | ImageError = self.prepare(data, schemes)
            except ImageError as exc:
                prepared = exc
            seconds = time.perf_counter() - start
            if self.metrics is not None:
                self.metrics.preprocess_time.observe(seconds)
                if isinstance(prepared, ImageError):
                    self.metrics.images_rejected.labels(prepared.reason).inc()
            return prepared, seconds

        return list(await asyncio.gather(*(anyio.to_thread.run_sync(work, data, limiter=self.decode_limiter)
                                           for data in images)))

    async def predict(self, patches: list[np.ndarray]) -> np.ndarray:
        """All patches in one runner call (the batcher may share the run with other requests): [M, K], or [M, K + D]
        with the features."""
        if not patches:
            return np.zeros((0, output_width(self.model.metadata)), np.float32)
        return await self.runner.infer(patches[0] if len(patches) == 1 else np.concatenate(patches))

    def top_k(self, probabilities: np.ndarray, k: int) -> tuple[Prediction, ...]:
        """The k most probable classes, highest first (ties in index order); none for k = 0. The one top-k:
        /predict's predictions, each patch's own (details=patches), Triton's classification strings."""
        k = min(k, probabilities.shape[0])
        if k <= 0:
            return ()
        top = np.argpartition(-probabilities, k - 1)[:k]
        top = top[np.argsort(-probabilities[top], kind="stable")]
        return tuple(Prediction(int(i), self.labels[i].name, self.labels[i].id, float(probabilities[i]))
                     for i in top)

    def postprocess(self, probs: np.ndarray, layout: list[tuple[int, str, int]], top_k: int
                    ) -> dict[int, dict[str, SchemeResult]]:
        """Split the rows back: `layout` lists (image position, scheme, patches) in the order they were batched."""
        out: dict[int, dict[str, SchemeResult]] = {}
        offset = 0
        k = self.num_classes
        for position, scheme, count in layout:
            rows = probs[offset:offset + count]
            offset += count
            mean = rows.mean(axis=0)
            features = patch_features = None
            if rows.shape[1] > k:  # the features columns (a runner may answer the probabilities only)
                patch_features, mean_features = rows[:, k:], mean[k:]
                rows, mean = rows[:, :k], mean[:k]
                features = mean_features
            out.setdefault(position, {})[scheme] = SchemeResult(mean, rows, self.top_k(mean, top_k), features,
                                                                patch_features)
        return out

    # -- the composition ---------------------------------------------------------------------------------------
    async def __call__(self, images: Sequence[bytes], *, schemes: Sequence[CropScheme] = ("ten",), top_k: int = 5,
                       all_or_nothing: bool = True) -> PipelineResult:
        start = time.perf_counter()
        prepared = await self.preprocess(images, schemes)
        preprocessed = time.perf_counter()
        failed = any(isinstance(p, ImageError) for p, _ in prepared)

        patches: list[np.ndarray] = []
        layout: list[tuple[int, str, int]] = []
        if not (failed and all_or_nothing):
            for position, (item, _seconds) in enumerate(prepared):
                if isinstance(item, PreparedImage):
                    for scheme in schemes:
                        patches.append(item.patches[scheme])
                        layout.append((position, scheme, len(item.patches[scheme])))
        probs = await self.predict(patches)
        inferred = time.perf_counter()
        by_image = self.postprocess(probs, layout, top_k)

        results = []
        for position, (item, seconds) in enumerate(prepared):
            if isinstance(item, ImageError):
                results.append(ClassifiedImage(position, seconds, error=item))
            else:
                results.append(ClassifiedImage(position, seconds, item.format, item.width, item.height,
                                           schemes=by_image.get(position), square=item.square))
        done = time.perf_counter()
        if self.metrics is not None:
            steps = self.metrics.pipeline_step
            steps.labels(self.name, "preprocess").observe(preprocessed - start)
            if layout:
                steps.labels(self.name, "predict").observe(inferred - preprocessed)
                steps.labels(self.name, "postprocess").observe(done - inferred)
                for scheme in schemes:
                    self.metrics.images.labels(scheme).inc(sum(1 for r in results if r.schemes))
        return PipelineResult(self.name, self.version, self.model.provider, results,
                              preprocessed - start, inferred - preprocessed, done - inferred)


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """How a version is opened, batched and fed: no defaults here (the service's are its `Settings`)."""

    providers: list[str] | None  # None: auto (CUDA when usable, then CPU)
    runtime: RuntimeOptions
    warmup_batch: int
    limits: DecodeLimits
    decode_threads: int
    batching: bool
    max_batch_patches: int
    max_batch_delay_ms: float
    max_queued: int  # 0: no limit
    concurrency: int
    adaptive_instances: bool  # with an instance group: a lone batch on the all-cores session
    retry_after: int


ModelLoader = Callable[[ModelVersion], ClassifierModel]
RunnerFactory = Callable[[ClassifierModel], InferenceRunner]


class PipelineFactory:
    """The one place a `Pipeline` is put together: load → runner → pipeline, from one `PipelineConfig`.

    `load` and `make_runner` may be replaced (tests inject recording runners or failing loaders; the service's
    repository loads at low priority). The decode limiter is shared by every pipeline the factory builds, so all
    loaded versions together decode at most `decode_threads` images at once."""

    def __init__(self, config: PipelineConfig, metrics: Metrics, *, loader: ModelLoader | None = None,
                 runner_factory: RunnerFactory | None = None, prepare: Prepare = run_here) -> None:
        self.config = config
        self.metrics = metrics
        self.prepare = prepare
        self.decode_limiter = anyio.CapacityLimiter(config.decode_threads)
        self.load: ModelLoader = loader or self._load
        self.make_runner: RunnerFactory = runner_factory or self._runner

    def _load(self, version: ModelVersion) -> ClassifierModel:
        config = self.config
        model = ClassifierModel(version, providers=config.providers, runtime=config.runtime)
        model.load(config.warmup_batch, prepare=self.prepare)
        return model

    def _runner(self, model: ClassifierModel) -> InferenceRunner:
        """The dynamic batcher (`batching`), or one run per request without it."""
        c = self.config
        if c.batching:
            return BatchingRunner(model, self.metrics, max_batch=c.max_batch_patches,
                                  max_delay=c.max_batch_delay_ms / 1000, max_queued=c.max_queued,
                                  concurrency=c.concurrency, adaptive=c.adaptive_instances,
                                  retry_after=c.retry_after)
        return ThreadRunner(model, self.metrics, concurrency=c.concurrency, adaptive=c.adaptive_instances,
                            max_queued=c.max_queued, retry_after=c.retry_after)

    def pipeline(self, model: ClassifierModel) -> Pipeline:
        """The model with a new (not yet started) runner: ``await pipeline.runner.start()`` before use."""
        return Pipeline(model, self.make_runner(model), limits=self.config.limits,
                        decode_limiter=self.decode_limiter, metrics=self.metrics)
