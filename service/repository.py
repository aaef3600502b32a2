"""The model repository: every model and version the store holds, loaded by policy, rolled over while serving.

What it does, in Triton's vocabulary (its model repository and model-control modes, for one process):

- **Which models.** All models in the store (``ALEXNET_MODELS`` empty) or the ones named there.
- **Which versions.** Each model's version policy (``ALEXNET_VERSION_POLICY``): ``latest:N`` (default
  ``latest:1``), ``all``, or ``specific:V1,V2``, for every model or per model (``latest:1; digits=all``).
  The newest loaded version of a model is its default; a request may name any loaded version.
- **Each loaded version** has its own ONNX Runtime session, its own batching queue (`InferenceRunner`) and
  its own `Pipeline`. One version costs about its ONNX file once more in memory, plus ONNX Runtime's arena
  (measured per version at load as the process's RSS growth, ``memory_bytes``; docs/api.md gives numbers).
- **Rollover.** New versions are seen by polling the store every ``ALEXNET_REPOSITORY_POLL_SECONDS`` (0: off)
  and on explicit control (Triton's repository extension: index, load, unload). A new version is parsed,
  sha256-verified, loaded and warmed up *before* it takes traffic; then it becomes the default, and the
  version it replaces is retired: it takes no new requests, the requests that already hold it (queued or
  running) finish on it, and only then are its runner stopped and its session released. Readiness stays
  true throughout, because a model always has a ready version during the switch.
- **A version that fails to load** (bad metadata, a missing or corrupt file, a sha256 mismatch, a folder
  still being copied) never takes traffic: what was serving keeps serving, and the index shows the version
  as UNAVAILABLE with the reason. It is tried again only when its files change (or on an explicit load), so
  a broken version costs one attempt, not one per poll.
- Requests **lease** a version for their whole life (`lease`), so "finish on the old version" holds whatever
  the transport: the lease is what retirement waits for.
- **Traffic control** (service/traffic.py): a request that names no version is routed by its model's split
  (weights over loaded versions, sticky by key) when it has one, else to the default version (`route`). A
  version of the split that is not loaded takes nothing, so a rollover under a split loses no request either.

Model-control calls and polls are serialised per model (one asyncio lock each); loading runs in a worker
thread, one load at a time (so the memory each one adds can be measured and a burst of new versions cannot
multiply the peak), while the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alexnet_store import ModelStore, ModelVersion, StoreError
from service.errors import NotFound, NotReady, ServiceUnavailable, Unprocessable
from service.metrics import Metrics
from service.model import ClassifierModel
from service.pipeline import Pipeline, PipelineFactory
from service.runner import InferenceRunner, run_to_completion
from service.traffic import Rule, Traffic
from service.version_policy import Policies

log = logging.getLogger(__name__)

State = Literal["LOADING", "READY", "UNLOADING", "UNAVAILABLE"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def trim_heap() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim): loading a version builds several
    transient copies of its weights (the ONNX protobuf, the serving graph, the optimised graph), which glibc
    otherwise keeps mapped after they are freed, so the process's RSS would count them as the version's cost."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_bytes(pid: int | str = "self") -> int | None:
    """A process's resident set size (Linux /proc; this one's by default), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


# -- what is loaded -----------------------------------------------------------------------------------------
@dataclass(eq=False)
class ServedVersion:
    """A loaded version: its pipeline (model + runner), when and at what cost it was loaded, its leases."""

    entry: ModelVersion
    pipeline: Pipeline
    load_seconds: float
    memory_bytes: int | None
    leases: int = 0
    retiring: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def model(self) -> ClassifierModel:
        return self.pipeline.model

    @property
    def runner(self) -> InferenceRunner:
        return self.pipeline.runner


@dataclass(frozen=True)
class VersionStatus:
    """One line of the repository index."""

    name: str
    version: int
    state: State
    reason: str = ""
    default: bool = False


@dataclass(frozen=True)
class Route:
    """The version a request was given, and how it was chosen: explicit (the request named it), split (by the
    model's split, keyed by the request id), sticky (by the split, keyed by the sticky header) or default."""

    served: ServedVersion
    how: Literal["explicit", "split", "sticky", "default"]


@dataclass
class _Record:
    state: State
    reason: str = ""
    signature: tuple | None = None  # the version folder's files when it failed: retried once they change


def folder_signature(path: Path) -> tuple:
    """Names, sizes and mtimes of a version folder's files: changes when a copy completes or a file is replaced."""
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)
                            if e.is_file()))
    except OSError:
        return ()


class ModelRepository:
    def __init__(self, store: ModelStore, factory: PipelineFactory, *, metrics: Metrics, models: Sequence[str],
                 policies: Policies, poll_seconds: float, retry_after: int, traffic: Traffic | None = None) -> None:
        self.store = store
        self.factory = factory
        self.metrics = metrics
        self.models = tuple(models)
        self.policies = policies
        self.poll_seconds = poll_seconds
        self.retry_after = retry_after
        self.served: dict[str, dict[int, ServedVersion]] = {}
        self.traffic = traffic if traffic is not None else Traffic()
        self.records: dict[tuple[str, int], _Record] = {}
        self.unloaded: set[str] = set()  # models unloaded through the control API: polling leaves them alone
        self.started = False  # the first sync has finished
        self.error: str | None = None  # why nothing can be served (an unreadable or empty store)
        self._locks: dict[str, asyncio.Lock] = {}
        self._load_lock = threading.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    # -- names and states ---------------------------------------------------------------------------------
    def store_names(self) -> list[str]:
        try:
            return self.store.names()
        except OSError as exc:
            log.error("cannot list the model store: %s", exc)
            return sorted(self.served)

    def store_versions(self, name: str) -> list[int]:
        try:
            return self.store.versions(name)
        except (OSError, StoreError) as exc:
            log.error("cannot list the versions of %s: %s", name, exc)
            return []

    def wanted(self) -> list[str]:
        """The models that should be served now: the configured (or all stored) ones, less those unloaded."""
        names = list(self.models) if self.models else self.store_names()
        return [n for n in names if n not in self.unloaded]

    def known(self) -> list[str]:
        return sorted(set(self.store_names()) | set(self.served) | set(self.models))

    @property
    def ready(self) -> bool:
        wanted = self.wanted()
        return self.started and bool(wanted) and all(self.served.get(n) for n in wanted)

    def default_version(self, name: str) -> ServedVersion | None:
        versions = self.served.get(name)
        return versions[max(versions)] if versions else None

    def status(self, name: str, version: int) -> VersionStatus:
        served = self.served.get(name, {}).get(version)
        if served is not None:
            return VersionStatus(name, version, "READY", default=self.default_version(name) is served)
        record = self.records.get((name, version))
        if record is not None:
            return VersionStatus(name, version, record.state, record.reason)
        if name in self.unloaded:
            return VersionStatus(name, version, "UNAVAILABLE", "unloaded")
        return VersionStatus(name, version, "UNAVAILABLE",
                             f"not selected by the version policy {self.policies.for_model(name)}")

    def index(self, name: str | None = None) -> list[VersionStatus]:
        names = [name] if name is not None else self.known()
        out = []
        for n in names:
            versions = set(self.store_versions(n)) | set(self.served.get(n, {}))
            versions |= {v for (m, v) in self.records if m == n}
            out.extend(self.status(n, v) for v in sorted(versions))
        return out

    def not_ready_reason(self) -> str:
        if self.error:
            return self.error
        if not self.started:
            return "the models are still loading; retry shortly"
        missing = [n for n in self.wanted() if not self.served.get(n)]
        if not self.wanted():
            return "no model to serve: the model store holds none"
        return "; ".join(self._unavailable_reason(n) for n in missing)

    def _unavailable_reason(self, name: str) -> str:
        failures = [f"v{v}: {r.reason}" for (m, v), r in sorted(self.records.items()) if m == name and r.reason
                    and r.state == "UNAVAILABLE"]
        if any(r.state == "LOADING" for (m, _), r in self.records.items() if m == name):
            return f"model {name!r} is still loading"
        versions = self.store_versions(name)
        if not versions:
            return f"model {name!r} has no version in the store"
        if not failures:
            return f"the version policy {self.policies.for_model(name)} of model {name!r} selects none of its " \
                   f"versions {versions}"
        return f"model {name!r} has no loadable version ({'; '.join(failures)})"

    def require_known(self, name: str) -> None:
        """NotFound (404) naming the models there are, for a model the store does not hold and nothing serves."""
        if name not in self.known():
            raise NotFound(f"no model named {name!r} (models: {', '.join(self.known()) or 'none'})",
                           reason="unknown_model")

    # -- leasing a version for one request ------------------------------------------------------------------
    def model_name(self, name: str | None) -> str:
        """The model a request means: the one it names, or the only one served when it names none."""
        if name is not None:
            return name
        candidates = self.wanted() or sorted(self.served)
        if len(candidates) != 1:
            if not candidates:
                raise NotReady(self.not_ready_reason(), retry_after=self.retry_after,
                               reason="loading" if not self.started else "no_model")
            raise Unprocessable(f"this service serves several models ({', '.join(candidates)}): choose one "
                                "with the 'model' parameter", reason="model")
        return candidates[0]

    def route(self, name: str | None, version: int | None, key: str | None = None, *,
              sticky: bool = False) -> Route:
        """The version for a request: the one it names; else, by the model's split, the one its `key` falls on
        (`sticky`: the key is the sticky header's, not the request id); else the default version."""
        if version is not None or key is None:
            return Route(self.resolve(name, version), "explicit" if version is not None else "default")
        name = self.model_name(name)
        rule = self.traffic.rule(name)
        chosen = rule.choose(name, key, self.served.get(name, {})) if rule.split else None
        if chosen is None:
            return Route(self.resolve(name, None), "default")
        return Route(self.served[name][chosen], "sticky" if sticky else "split")

    def set_traffic(self, name: str, rule: Rule) -> None:
        """Replace a model's rule at runtime; every version it names must be loaded now (a typo is refused, not
        silently given no traffic)."""
        self.require_known(name)
        loaded = self.served.get(name, {})
        missing = sorted(v for v in rule.versions if v not in loaded)
        if missing:
            raise Unprocessable(f"model {name!r}: version{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(map(str, missing))} {'are' if len(missing) > 1 else 'is'} not loaded "
                                f"(loaded: {sorted(loaded) or 'none'}); load a version before sending it traffic",
                                reason="traffic")
        self.traffic.set(name, rule)
        log.info("traffic for model %s: split %s, shadow %s", name, rule.to_dict()["split"] or "none (default "
                 "version)", rule.to_dict()["shadow"] or "none")

    def resolve(self, name: str | None, version: int | None) -> ServedVersion:
        name = self.model_name(name)
        versions = self.served.get(name, {})
        if version is None:
            served = self.default_version(name)
            if served is not None:
                return served
            self.require_known(name)
            if name in self.unloaded:
                raise NotFound(f"model {name!r} is unloaded; load it with POST /v2/repository/models/{name}/load",
                               reason="unloaded")
            raise NotReady(self._unavailable_reason(name) if self.started else self.not_ready_reason(),
                           retry_after=self.retry_after, reason="loading" if not self.started else "unavailable")
        served = versions.get(version)
        if served is not None:
            return served
        self.require_known(name)
        if version not in self.store_versions(name) and (name, version) not in self.records:
            raise NotFound(f"model {name!r} has no version {version} (versions: {self.store_versions(name)})",
                           reason="unknown_version")
        status = self.status(name, version)
        if status.state == "LOADING":
            raise NotReady(f"version {version} of model {name!r} is still loading", retry_after=self.retry_after,
                           reason="loading")
        raise NotFound(f"version {version} of model {name!r} is not served ({status.state.lower()}: "
                       f"{status.reason}; loaded: {sorted(versions) or 'none'})", reason="version_not_served")

    @contextlib.asynccontextmanager
    async def lease(self, name: str | None, version: int | None) -> AsyncIterator[ServedVersion]:
        """Hold a version for one request: it is not released until every lease on it has ended."""
        async with self.hold(self.resolve(name, version)) as served:
            yield served

    @contextlib.asynccontextmanager
    async def hold(self, served: ServedVersion) -> AsyncIterator[ServedVersion]:
        """Lease a version already chosen (`route`)."""
        served.leases += 1
        served.idle.clear()
        try:
            yield served
        finally:
            served.leases -= 1
            if served.leases == 0:
                served.idle.set()

    # -- loading and unloading ------------------------------------------------------------------------------
    async def start(self) -> None:
        """The first sync (loading what the policies select), then polling if it is on; never raises."""
        try:
            if not self.store.root.is_dir():
                self.error = "the model store (ALEXNET_MODEL_STORE) does not exist"
            await self.sync()
            if not self.wanted() and not self.error:
                self.error = "the model store holds 0 models"
        finally:
            self.started = True
        if self.poll_seconds > 0:
            self._poller = asyncio.create_task(self._poll(), name="repository-poll")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.sync()
            except Exception:  # one bad poll must not end polling
                log.exception("polling the model store failed")
            if self.wanted():
                self.error = None

    async def sync(self, names: Iterable[str] | None = None) -> None:
        """Bring the loaded versions of these models (default: every known one) in line with the store."""
        for name in sorted(set(names) if names is not None else set(self.wanted()) | set(self.served)):
            async with self._locks.setdefault(name, asyncio.Lock()):
                await self._reconcile(name)

    async def _reconcile(self, name: str) -> None:
        wanted = name in self.wanted()
        available = self.store_versions(name) if wanted else []
        policy = self.policies.for_model(name)
        served = self.served.setdefault(name, {})
        while True:
            candidates = [v for v in available if not self._failed_unchanged(name, v)]
            desired = policy.select(candidates)
            to_load = sorted(desired - set(served), reverse=True)  # newest first: it takes traffic soonest
            if not to_load:
                break
            for version in to_load:
                await self._load(name, version)
        for version in sorted(set(served) - desired):
            self._retire(name, version)
        if not served:
            del self.served[name]
        for key in [(m, v) for (m, v), r in self.records.items()  # versions gone from the store: forgotten
                    if m == name and v not in available and r.state == "UNAVAILABLE"]:
            del self.records[key]

    def _failed_unchanged(self, name: str, version: int) -> bool:
        record = self.records.get((name, version))
        return (record is not None and record.signature is not None
                and record.signature == folder_signature(self.store.root / name / str(version)))

    async def _load(self, name: str, version: int) -> None:
        path = self.store.root / name / str(version)
        signature = folder_signature(path)
        self.records[(name, version)] = _Record("LOADING")
        start = time.perf_counter()
        try:
            # a shutdown during a load waits for it (seconds), so no thread is left inside ONNX Runtime
            entry, model, memory = await run_to_completion(self._load_in_thread, path, name, version)
            pipeline = self.factory.pipeline(model)
            await pipeline.runner.start()
        except Exception as exc:
            reason = self._describe(exc, path)
            self.records[(name, version)] = _Record("UNAVAILABLE", reason, signature)
            log.error("model %s version %d failed to load: %s", name, version, reason)
            return
        seconds = time.perf_counter() - start
        self.served.setdefault(name, {})[version] = ServedVersion(entry, pipeline, seconds, memory)
        self.records.pop((name, version), None)
        self.metrics.model_ready.labels(name, str(version), model.provider).set(1)
        if memory is not None:
            self.metrics.model_memory.labels(name, str(version)).set(memory)
        log.info("ready: model %s v%d on %s (load + warm-up %.1f s, +%s MB)", name, version, model.provider,
                 seconds, "?" if memory is None else f"{memory / 2**20:.0f}")

    def _load_in_thread(self, path: Path, name: str, version: int) -> tuple[ModelVersion, ClassifierModel, int | None]:
        with self._load_lock:
            before = rss_bytes()
            entry = self.store.load(path)
            meta = entry.metadata
            if (meta.name, meta.version) != (name, version):
                raise StoreError(f"metadata.json describes {meta.name} v{meta.version}, not the folder "
                                 f"{name}/{version} it is in (copied from elsewhere?)")
            model = self.factory.load(entry)
            trim_heap()
            after = rss_bytes()
        return entry, model, (max(0, after - before) if before is not None and after is not None else None)

    def _describe(self, exc: Exception, path: Path) -> str:
        """The reason a version failed, with no server path in it (paths are told relative to the store)."""
        text = str(exc) or type(exc).__name__
        root = str(self.store.root.resolve())
        for prefix in (str(path), root, str(self.store.root)):
            text = text.replace(prefix + os.sep, "").replace(prefix, "")
        return re.sub(r"\s+", " ", text).strip(" :") or type(exc).__name__

    def _retire(self, name: str, version: int) -> None:
        served = self.served[name].pop(version)
        served.retiring = True
        self.records[(name, version)] = _Record("UNLOADING")
        if served.leases == 0:
            served.idle.set()
        task = asyncio.create_task(self._release(name, version, served), name=f"retire-{name}-{version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _release(self, name: str, version: int, served: ServedVersion) -> None:
        """After the last request on it has finished: stop the runner and drop the session."""
        await served.idle.wait()
        await served.runner.stop()
        provider = served.model.provider
        served.model.close()
        del served
        trim_heap()
        self.metrics.model_ready.labels(name, str(version), provider).set(0)
        self.metrics.model_memory.labels(name, str(version)).set(0)
        if self.records.get((name, version), _Record("READY")).state == "UNLOADING":
            self.records[(name, version)] = _Record("UNAVAILABLE", "unloaded")
        log.info("released model %s v%d", name, version)

    # -- explicit control (Triton's model repository extension) -----------------------------------------------
    async def load(self, name: str) -> list[VersionStatus]:
        """Load `name` now by its policy (again trying versions that failed); ServiceUnavailable if none loads."""
        self.require_known(name)
        self.unloaded.discard(name)
        for key in [k for k, r in self.records.items() if k[0] == name and r.signature is not None]:
            del self.records[key]
        await self.sync([name])
        if not self.served.get(name):
            raise ServiceUnavailable(f"failed to load model {name!r}: {self._unavailable_reason(name)}",
                                     retry_after=self.retry_after, reason="load_failed")
        if self.wanted():
            self.error = None
        return self.index(name)

    async def unload(self, name: str) -> list[VersionStatus]:
        """Unload every version of `name` (after their requests finish) and keep it unloaded until `load`."""
        self.require_known(name)
        self.unloaded.add(name)
        await self.sync([name])
        await self.drain()
        return self.index(name)

    async def drain(self) -> None:
        """Wait until every retired version has been released."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for name in list(self.served):
            for version in list(self.served[name]):
                self.served[name][version].idle.set()  # shutting down: queued requests are failed by the runner
                self._retire(name, version)
        await self.drain()
