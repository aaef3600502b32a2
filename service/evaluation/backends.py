"""Where `alexnet-eval` gets its predictions: ONNX Runtime in this process, or a running service over HTTP.

Both backends produce the same `EvaluatedImage` per image (the top-k class indices and probabilities for each
crop scheme, or the reason the image could not be used), so the metrics code never knows which one ran.

- `InProcessBackend` runs the service's own `Pipeline` (service/pipeline.py: decode, patches, dynamic batching,
  the serving graph, averaging, top-k) on a model loaded in this process. With ``--crops both`` an image is
  decoded and resized once and both patch sets are cut from that square. Files are read and decoded in worker
  threads (Pillow and NumPy release the GIL) while the model runs. It needs ONNX Runtime, not the web stack.
- `HttpBackend` posts batches of files to ``POST /predict`` (multipart field ``files``) with a bounded
  number of requests in flight, retrying with exponential backoff on 503/502/504/429 (``Retry-After`` is
  honoured) and on connection errors. The service fails a whole request when one of its files is bad, so
  a rejected batch is split in halves until the bad file is alone and its error message is recorded.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from alexnet_store import Label, ModelStore, ModelVersion, StoreError
from alexnet_store.vocabulary import CROP_SCHEMES
from service.evaluation.data import Sample

TOP_K = 5


class BackendError(RuntimeError):
    """The model or the service cannot be used (a setup error, or a service that went away mid-run)."""


@dataclass(frozen=True)
class TopK:
    """One image's best classes under one crop scheme, highest probability first."""

    indices: tuple[int, ...]
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class EvaluatedImage:
    """What a backend returns for one sample: `topk` per crop scheme, or `error` (then `topk` is empty)."""

    position: int  # the sample's index in the evaluated list
    path: Path
    target: int
    topk: dict[str, TopK] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    precision: str
    provider: str
    labels: tuple[Label, ...]


ResultCallback = Callable[[EvaluatedImage], None]


class Backend(Protocol):
    kind: str

    def describe(self) -> ModelInfo:
        """The model's identity and labels; cheap (no session, no inference), so data checks can run first."""

    def start(self) -> None:
        """Load the model / wait for the service to be ready."""

    def evaluate(self, samples: Sequence[Sample], schemes: Sequence[str], on_result: ResultCallback) -> None:
        """Call `on_result` once per sample (in any order)."""

    def close(self) -> None: ...


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# -- in-process -------------------------------------------------------------------------------------------
class InProcessBackend:
    """The service's own pipeline (service/pipeline.py) and dynamic batcher, on a model loaded in this process."""

    kind = "in-process"

    def __init__(self, model_store: Path, name: str | None = None, version: int | None = None,
                 providers: Sequence[str] | None = None, workers: int | None = None, batch_size: int = 16,
                 intra_op_threads: int = 0) -> None:
        self.model_store = Path(model_store)
        self.name, self.version_number = name, version
        self.providers = providers
        self.workers = workers or default_workers()
        self.batch_size = batch_size
        self.intra_op_threads = intra_op_threads
        self._version: ModelVersion | None = None
        self.model: Any = None  # service.model.ClassifierModel once started

    def describe(self) -> ModelInfo:
        if self._version is None:
            try:
                self._version = ModelStore(self.model_store).resolve(self.name, self.version_number)
            except StoreError as exc:
                raise BackendError(str(exc)) from exc
        meta = self._version.metadata
        provider = self.model.provider if self.model is not None else "not loaded"
        return ModelInfo(meta.name, meta.version, meta.precision, provider, meta.labels)

    def factory(self, schemes: Sequence[str]) -> Any:
        """The service's own `PipelineFactory`: its session options and decode limits (service/defaults.py, which its
        `Settings` use too; not the environment, so an evaluation is reproducible whatever ALEXNET_* a shell
        holds) with alexnet-eval's flags: `batch_size` images per model run, `workers` decode threads, no queue
        limit (every image waits its turn). No pydantic: this runs where only ONNX Runtime is installed."""
        from alexnet_store.vocabulary import PATCHES_PER_SCHEME
        from service import defaults
        from service.metrics import Metrics
        from service.model import RuntimeOptions
        from service.pipeline import PipelineConfig, PipelineFactory
        from service.preprocess import DecodeLimits

        patches = sum(PATCHES_PER_SCHEME[s] for s in schemes)
        config = PipelineConfig(
            providers=list(self.providers) if self.providers else None,
            runtime=RuntimeOptions(intra_op_threads=self.intra_op_threads, spinning=defaults.INTRA_OP_SPINNING,
                                   cudnn_conv_algo_search=defaults.CUDNN_CONV_ALGO_SEARCH,
                                   reorder_elision=defaults.CPU_REORDER_ELISION),
            warmup_batch=1, limits=DecodeLimits(max_pixels=defaults.MAX_PIXELS, draft=defaults.JPEG_DRAFT),
            decode_threads=self.workers, batching=True, max_batch_patches=self.batch_size * patches,
            max_batch_delay_ms=0.0, max_queued=0, concurrency=1,
            adaptive_instances=False,  # one session (RuntimeOptions' instances default): nothing to spread
            retry_after=0)
        return PipelineFactory(config, Metrics())

    def start(self) -> None:
        self.describe()
        try:
            self.model = self.factory(CROP_SCHEMES).load(self._version)
        except (StoreError, ValueError) as exc:
            raise BackendError(f"cannot load {self._version.path}: {exc}") from exc

    def evaluate(self, samples: Sequence[Sample], schemes: Sequence[str], on_result: ResultCallback) -> None:
        if self.model is None:
            raise RuntimeError("start() the backend first")
        asyncio.run(self._evaluate(samples, schemes, on_result))

    async def _evaluate(self, samples: Sequence[Sample], schemes: Sequence[str], on_result: ResultCallback) -> None:
        """One pipeline call per image, many in flight: the batcher gathers them into runs of `batch_size` images
        while the next ones are read and decoded, exactly as concurrent requests are in the service."""
        import anyio.to_thread

        pipeline = self.factory(schemes).pipeline(self.model)
        runner = pipeline.runner
        queue = iter(enumerate(samples))

        async def one(position: int, sample: Sample) -> EvaluatedImage:
            try:
                data = await anyio.to_thread.run_sync(sample.path.read_bytes)
            except OSError as exc:
                return EvaluatedImage(position, sample.path, sample.target, error=f"cannot read the file: "
                                                                               f"{exc.strerror or exc}")
            try:
                result = await pipeline([data], schemes=schemes, top_k=TOP_K, all_or_nothing=False)
            except Exception as exc:  # one odd file must not end a run over thousands: report it with the rest
                return EvaluatedImage(position, sample.path, sample.target, error=f"{type(exc).__name__}: {exc}")
            image = result.images[0]
            if image.error is not None:
                return EvaluatedImage(position, sample.path, sample.target, error=str(image.error))
            return EvaluatedImage(position, sample.path, sample.target, {
                s: TopK(tuple(p.index for p in r.top), tuple(p.probability for p in r.top))
                for s, r in image.schemes.items()})

        async def worker() -> None:
            for position, sample in queue:  # one shared iterator: each sample is taken by exactly one worker
                on_result(await one(position, sample))

        await runner.start()
        try:
            # enough images in flight to keep a batch decoding while the previous one runs
            await asyncio.gather(*(worker() for _ in range(self.batch_size * 2 + self.workers)))
        finally:
            await runner.stop()

    def close(self) -> None:
        self.model = None


# -- HTTP -------------------------------------------------------------------------------------------------
RETRY_STATUSES = frozenset({429, 502, 503, 504})
CONNECT_GRACE_S = 3.0  # a service that was just started may not be listening yet


class HttpBackend:
    kind = "http"

    def __init__(self, url: str, name: str | None = None, version: int | None = None, workers: int | None = None,
                 batch_size: int = 8, retries: int = 6, backoff: float = 0.5, max_backoff: float = 30.0,
                 timeout: float = 300.0, ready_timeout: float = 60.0, transport: Any = None) -> None:
        self.url = url.rstrip("/")
        self.name, self.version = name, version  # None: the service's only model, its default version
        self.transport = transport  # an httpx transport (tests pass httpx.MockTransport); None: the network
        self.workers = workers or 4
        self.batch_size = batch_size
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.timeout, self.ready_timeout = timeout, ready_timeout
        self._info: ModelInfo | None = None
        self.retried = 0  # requests answered 503/429/5xx or lost to a connection error, then retried

    # -- setup (synchronous: it runs before the progress bar) ------------------------------------------------
    @property
    def models_path(self) -> str:
        if self.name is None:
            return "/v1/models"
        return f"/v1/models/{self.name}" + (f"/versions/{self.version}" if self.version is not None else "")

    def describe(self) -> ModelInfo:
        """GET /v1/models[/NAME[/versions/V]], waiting while the service answers 503 (still loading) for up to
        `ready_timeout`. Later requests name the model and version found here, so a rollover during the run
        cannot mix two versions' answers."""
        if self._info is None:
            import httpx

            start = time.monotonic()
            with httpx.Client(transport=self.transport, timeout=30.0) as client:
                while True:
                    waited = time.monotonic() - start
                    try:
                        response = client.get(self.url + self.models_path)
                    except httpx.TransportError as exc:
                        if waited > CONNECT_GRACE_S:
                            raise BackendError(f"cannot reach the service at {self.url}: {exc}") from exc
                    else:
                        if response.status_code == 200:
                            break
                        if response.status_code != 503 or waited > self.ready_timeout:
                            raise BackendError(f"GET {self.url}{self.models_path} answered "
                                               f"{response.status_code}: {_detail(response)}")
                    time.sleep(0.5)
            self._info = parse_model_info(response.json())
        return self._info

    def start(self) -> None:
        """Wait for /health/ready (the model loaded and warmed up), then read the provider it runs on."""
        import httpx

        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(transport=self.transport, timeout=10.0) as client:
            while True:
                try:
                    if client.get(f"{self.url}/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"the service at {self.url} did not become ready in {self.ready_timeout:.0f} s")
                time.sleep(0.5)
        self._info = None
        self.describe()

    def close(self) -> None:
        pass

    # -- the run -----------------------------------------------------------------------------------------------
    def evaluate(self, samples: Sequence[Sample], schemes: Sequence[str], on_result: ResultCallback) -> None:
        asyncio.run(self._evaluate(list(samples), list(schemes), on_result))

    async def _evaluate(self, samples: list[Sample], schemes: list[str], on_result: ResultCallback) -> None:
        import httpx

        top_k = min(TOP_K, len(self.describe().labels))
        partial: dict[int, dict[str, TopK]] = {}
        done: set[int] = set()

        def deliver(position: int, scheme: str, topk: TopK | None, error: str | None) -> None:
            if position in done:
                return
            sample = samples[position]
            if error is not None:
                done.add(position)
                on_result(EvaluatedImage(position, sample.path, sample.target, error=error))
                return
            got = partial.setdefault(position, {})
            got[scheme] = topk
            if len(got) == len(schemes):
                done.add(position)
                del partial[position]
                on_result(EvaluatedImage(position, sample.path, sample.target, {s: got[s] for s in schemes}))

        positions = list(range(len(samples)))
        jobs = iter([(positions[i:i + self.batch_size], scheme)
                     for i in range(0, len(positions), self.batch_size) for scheme in schemes])
        limits = httpx.Limits(max_connections=self.workers, max_keepalive_connections=self.workers)
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout, limits=limits,
                                     transport=self.transport) as client:

            async def worker() -> None:
                for chunk, scheme in jobs:  # one shared iterator: each job is taken by exactly one worker
                    files = []
                    for position in chunk:
                        if position in done:
                            continue
                        try:
                            data = await asyncio.to_thread(samples[position].path.read_bytes)
                        except OSError as exc:
                            deliver(position, scheme, None, f"cannot read the file: {exc.strerror or exc}")
                            continue
                        files.append((position, data))
                    if files:
                        await self._predict(client, files, scheme, top_k, samples, deliver)

            await asyncio.gather(*(worker() for _ in range(self.workers)))

    async def _predict(self, client, files: list[tuple[int, bytes]], scheme: str, top_k: int,
                       samples: list[Sample], deliver) -> None:
        response = await self._post(client, [(samples[p].path.name, data) for p, data in files], scheme, top_k)
        if response.status_code == 200:
            results = _parse_results(response, len(files))
            for (position, _), topk in zip(files, results, strict=True):
                deliver(position, scheme, topk, None)
            return
        if len(files) > 1:  # the service rejects a whole request for one bad file: find it by halving
            half = len(files) // 2
            await self._predict(client, files[:half], scheme, top_k, samples, deliver)
            await self._predict(client, files[half:], scheme, top_k, samples, deliver)
            return
        deliver(files[0][0], scheme, None, f"service answered {response.status_code}: {_detail(response)}")

    async def _post(self, client, files: list[tuple[str, bytes]], scheme: str, top_k: int):
        import httpx

        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                response = await client.post(
                    "/predict", params={"crops": scheme, "top_k": top_k, "model": self._info.name,
                                        "version": self._info.version},
                    files=[("files", (name, data, "application/octet-stream")) for name, data in files],
                )
            except httpx.TransportError as exc:
                problem, wait = f"{type(exc).__name__}: {exc}", delay
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                problem = f"HTTP {response.status_code}: {_detail(response)}"
                wait = _retry_after(response) or delay
            if attempt == self.retries:
                raise BackendError(f"POST {self.url}/predict failed {self.retries + 1} times; last: {problem}")
            self.retried += 1
            await asyncio.sleep(min(wait, self.max_backoff) * random.uniform(1.0, 1.25))
            delay *= 2
        raise AssertionError("unreachable")


def _retry_after(response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


def _detail(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else str(detail)[:300]


def _parse_results(response, expected: int) -> list[TopK]:
    """The API contract, read with the service's own response schema (service/schemas.py `PredictResponse`)."""
    from pydantic import ValidationError

    from service.schemas import PredictResponse

    try:
        results = PredictResponse.model_validate_json(response.content).results
    except ValidationError as exc:
        raise BackendError(f"unexpected /predict response ({exc.error_count()} problem(s): "
                           f"{exc.errors()[0]['msg']}): {response.text[:300]}") from exc
    parsed = [TopK(tuple(p.index for p in r.predictions), tuple(p.probability for p in r.predictions))
              for r in results]
    if len(parsed) != expected:
        raise BackendError(f"/predict returned {len(parsed)} results for {expected} files")
    return parsed


def parse_model_info(body: Any) -> ModelInfo:
    """`GET /v1/models` (the only model's default version) or `/v1/models/NAME[/versions/V]` → ModelInfo, read with
    the service's own schemas (service/schemas.py `ModelList`, `ServedModel`) and the store's metadata reader."""
    from pydantic import ValidationError

    from service.schemas import ModelList, ServedModel

    try:
        if isinstance(body, dict) and "models" in body:
            served = [m for m in ModelList.model_validate(body).models if m.default]
            names = sorted({m.name for m in served})
            if len(served) != 1:
                raise BackendError("the service serves " + (f"several models ({', '.join(names)}): choose one "
                                                             "with --model-name" if served else "no ready model"))
            model = served[0]
        else:
            model = ServedModel.model_validate(body)
    except ValidationError as exc:
        raise BackendError(f"GET /v1/models: unexpected model description ({exc.errors()[0]['msg']})") from exc
    if model.metadata is None:
        raise BackendError("GET /v1/models: the model has no metadata (is the version loaded?)")
    try:  # the two fields an evaluation reads of the version's metadata.json
        labels = tuple(Label(id=str(lab["id"]), name=str(lab["name"])) for lab in model.metadata["labels"])
        precision = str(model.metadata.get("precision", "fp32"))
    except (KeyError, TypeError) as exc:
        raise BackendError(f"GET /v1/models: unexpected model metadata ({exc!r})") from exc
    return ModelInfo(model.name, model.version, precision, model.provider or "unknown", labels)
