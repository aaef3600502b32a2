"""Where `alexnet-eval` gets its predictions: ONNX Runtime in this process, or a running service over HTTP.

Both backends produce the same `ImageResult` per image (the top-k class indices and probabilities for each
crop scheme, or the reason the image could not be used), so the metrics code never knows which one ran.

- `InProcessBackend` runs `service.model.ClassifierModel` — the service's own session, serving graph and
  postprocessing — on patches cut by `service.preprocess` (the functions the service calls). With
  ``--crops both`` an image is decoded and resized once and both patch sets are cut from that square.
  Files are read and decoded on a thread pool (Pillow and NumPy release the GIL) while the model runs.
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
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from alexnet_store import Label, ModelStore, ModelVersion, StoreError
from service.eval_data import Sample

TOP_K = 5
SCHEMES = ("ten", "center")


class BackendError(RuntimeError):
    """The model or the service cannot be used (a setup error, or a service that went away mid-run)."""


@dataclass(frozen=True)
class TopK:
    """One image's best classes under one crop scheme, highest probability first."""

    indices: tuple[int, ...]
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class ImageResult:
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


ResultCallback = Callable[[ImageResult], None]


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

    def start(self) -> None:
        from service.model import ClassifierModel, RuntimeOptions  # onnxruntime only when this backend runs

        self.describe()
        try:
            model = ClassifierModel(self._version, providers=self.providers,
                                    runtime=RuntimeOptions(intra_op_threads=self.intra_op_threads))
            model.load()
        except (StoreError, ValueError) as exc:
            raise BackendError(f"cannot load {self._version.path}: {exc}") from exc
        self.model = model

    def evaluate(self, samples: Sequence[Sample], schemes: Sequence[str], on_result: ResultCallback) -> None:
        if self.model is None:
            raise RuntimeError("start() the backend first")
        window = self.batch_size * 2 + self.workers  # decoded images held ahead of the model, at most
        pending: deque[tuple[int, Sample, Future]] = deque()
        batch: list[tuple[int, Sample, list[np.ndarray]]] = []
        with ThreadPoolExecutor(self.workers, thread_name_prefix="eval-decode") as pool:
            queue = iter(enumerate(samples))
            for position, sample in queue:
                pending.append((position, sample, pool.submit(self._patches, sample.path, schemes)))
                if len(pending) < window:
                    continue
                self._drain(pending, batch, schemes, on_result, until=window // 2)
            self._drain(pending, batch, schemes, on_result, until=0)
            if batch:
                self._run_batch(batch, schemes, on_result)

    def _drain(self, pending, batch, schemes, on_result, until: int) -> None:
        while len(pending) > until:
            position, sample, future = pending.popleft()
            patches = future.result()
            if isinstance(patches, str):
                on_result(ImageResult(position, sample.path, sample.target, error=patches))
                continue
            batch.append((position, sample, patches))
            if len(batch) >= self.batch_size:
                self._run_batch(batch, schemes, on_result)
                batch.clear()

    def _patches(self, path: Path, schemes: Sequence[str]) -> list[np.ndarray] | str:
        """File → one patch array per scheme (decoded once), or the reason it cannot be used."""
        from service.preprocess import ImageError, crop_patches, decode_image, resize_square

        pre = self.model.metadata.preprocessing
        try:
            data = path.read_bytes()
        except OSError as exc:
            return f"cannot read the file: {exc.strerror or exc}"
        try:
            square = resize_square(decode_image(data, pre.resize_size, self.model.limits), pre.resize_size)
            return [crop_patches(square, pre.crop_size, scheme) for scheme in schemes]
        except ImageError as exc:
            return str(exc)
        except Exception as exc:  # one odd file must not end a run over thousands: report it with the rest
            return f"{type(exc).__name__}: {exc}"

    def _run_batch(self, batch, schemes: Sequence[str], on_result: ResultCallback) -> None:
        """One model run for every patch of every image and scheme in the batch, then the service's postprocess."""
        probs = self.model.predict(np.concatenate([p for _, _, patches in batch for p in patches]))
        offset = 0
        for position, sample, patches in batch:
            topk = {}
            for scheme, p in zip(schemes, patches, strict=True):
                preds = self.model.postprocess(probs[offset:offset + len(p)], TOP_K)
                topk[scheme] = TopK(tuple(x.index for x in preds), tuple(x.probability for x in preds))
                offset += len(p)
            on_result(ImageResult(position, sample.path, sample.target, topk))

    def close(self) -> None:
        self.model = None


# -- HTTP -------------------------------------------------------------------------------------------------
RETRY_STATUSES = frozenset({429, 502, 503, 504})
CONNECT_GRACE_S = 3.0  # a service that was just started may not be listening yet


class HttpBackend:
    kind = "http"

    def __init__(self, url: str, workers: int | None = None, batch_size: int = 8, retries: int = 6,
                 backoff: float = 0.5, max_backoff: float = 30.0, timeout: float = 300.0,
                 ready_timeout: float = 60.0, transport: Any = None) -> None:
        self.url = url.rstrip("/")
        self.transport = transport  # an httpx transport (tests pass httpx.MockTransport); None: the network
        self.workers = workers or 4
        self.batch_size = batch_size
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.timeout, self.ready_timeout = timeout, ready_timeout
        self._info: ModelInfo | None = None
        self.retried = 0  # requests answered 503/429/5xx or lost to a connection error, then retried

    # -- setup (synchronous: it runs before the progress bar) ------------------------------------------------
    def describe(self) -> ModelInfo:
        """GET /v1/models, waiting while the service answers 503 (still loading) for up to `ready_timeout`."""
        if self._info is None:
            import httpx

            start = time.monotonic()
            with httpx.Client(transport=self.transport, timeout=30.0) as client:
                while True:
                    waited = time.monotonic() - start
                    try:
                        response = client.get(f"{self.url}/v1/models")
                    except httpx.TransportError as exc:
                        if waited > CONNECT_GRACE_S:
                            raise BackendError(f"cannot reach the service at {self.url}: {exc}") from exc
                    else:
                        if response.status_code == 200:
                            break
                        if response.status_code != 503 or waited > self.ready_timeout:
                            raise BackendError(f"GET {self.url}/v1/models answered {response.status_code}: "
                                               f"{_detail(response)}")
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
                on_result(ImageResult(position, sample.path, sample.target, error=error))
                return
            got = partial.setdefault(position, {})
            got[scheme] = topk
            if len(got) == len(schemes):
                done.add(position)
                del partial[position]
                on_result(ImageResult(position, sample.path, sample.target, {s: got[s] for s in schemes}))

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
                    "/predict", params={"crops": scheme, "top_k": top_k},
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
    """The API contract: ``{"results": [{"filename", "predictions": [{"index", "label", "probability"}]}]}``."""
    try:
        results = response.json()["results"]
        parsed = [TopK(tuple(int(p["index"]) for p in r["predictions"]),
                       tuple(float(p["probability"]) for p in r["predictions"])) for r in results]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"unexpected /predict response ({exc}): {response.text[:300]}") from exc
    if len(parsed) != expected:
        raise BackendError(f"/predict returned {len(parsed)} results for {expected} files")
    return parsed


def parse_model_info(body: Any) -> ModelInfo:
    """`GET /v1/models` → ModelInfo; accepts the metadata at the top level or under a `model`/`metadata` key."""
    candidates = [body]
    if isinstance(body, dict):
        candidates += [body.get(k) for k in ("model", "metadata", "data")]
        candidates += [v for k in ("models", "data") if isinstance(body.get(k), list) for v in body[k]]
    found = None
    for c in candidates:
        if isinstance(c, dict) and isinstance(c.get("labels"), list):
            found = c
            break
        if isinstance(c, dict) and isinstance(c.get("metadata"), dict) and "labels" in c["metadata"]:
            found = {**c, **c["metadata"]}
            break
    if found is None:
        raise BackendError("GET /v1/models has no 'labels' list: cannot match classes to the model")
    try:
        labels = tuple(Label(id=str(lab["id"]), name=str(lab["name"])) if isinstance(lab, dict)
                       else Label(id=str(lab), name=str(lab)) for lab in found["labels"])
    except KeyError as exc:
        raise BackendError(f"GET /v1/models: a label lacks {exc}") from exc
    provider = _first(body, found, key="provider") or "unknown"
    precision = _first(body, found, key="precision") or "fp32"
    return ModelInfo(str(found.get("name", "?")), int(found.get("version", 0)), str(precision), str(provider), labels)


def _first(*dicts: Any, key: str) -> Any:
    for d in dicts:
        if isinstance(d, dict):
            if d.get(key) is not None:
                return d[key]
            for v in d.values():
                if isinstance(v, dict) and v.get(key) is not None:
                    return v[key]
    return None
