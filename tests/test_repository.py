"""The model repository on real exported versions: version policies, rollover, leases, broken versions.

The repository is built exactly as the app builds it (ServiceState: real loader, checksum, ONNX Runtime
session, batching runner); polling is driven by calling `sync()` where the app's poller would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from support.app import clone_version
from support.paths import SKLEARN_IMAGES
from support.settings import cpu_settings

from service.app_state import ServiceState
from service.metrics import Metrics
from service.repository import ModelRepository
from service.version_policy import Policies, VersionPolicy

PHOTO = (SKLEARN_IMAGES / "china.jpg").read_bytes()


# -- version policies -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "available", "selected"), [
    ("latest", [1, 2, 3], {3}), ("latest:1", [1, 2, 3], {3}), ("latest:2", [1, 2, 3], {2, 3}),
    ("latest:5", [1, 2], {1, 2}), ("all", [1, 4, 9], {1, 4, 9}), ("specific:1,3", [1, 2, 3], {1, 3}),
    ("specific:7", [1, 2], set()), (" LATEST : 2 ", [5, 6, 7], {6, 7}), ("latest", [], set()),
])
def test_version_policies_select(text, available, selected):
    assert VersionPolicy.parse(text).select(available) == selected


@pytest.mark.parametrize("text", ["newest", "latest:0", "latest:x", "all:2", "specific:", "specific:0", "specific:a"])
def test_bad_policies_are_refused_with_the_syntax(text):
    with pytest.raises(ValueError, match=re.escape("use 'latest', 'latest:N', 'all' or 'specific:V1,V2,...'")):
        VersionPolicy.parse(text)


def test_per_model_policies():
    policies = Policies.parse("latest:2; digits=all ; alexnet=specific:1,3")
    assert str(policies.for_model("other")) == "latest:2"
    assert str(policies.for_model("digits")) == "all"
    assert str(policies.for_model("alexnet")) == "specific:1,3"
    with pytest.raises(ValueError, match="invalid model name"):
        Policies.parse("../x=all")


# -- the repository on a real store --------------------------------------------------------------------------------
@pytest.fixture
def store(exported, tmp_path) -> Path:
    """A private store holding testnet v1 (a hard-linked copy of the session's exported model)."""
    _, version, _ = exported
    target = tmp_path / "store" / "testnet" / "1"
    target.mkdir(parents=True)
    for item in version.path.iterdir():  # hard links: no 230 MB copy; nothing here writes through them
        os.link(item, target / item.name)
    return tmp_path / "store"


def repository(root: Path, policy: str = "latest:1", **settings) -> ModelRepository:
    s = cpu_settings(root, warmup_batch=1, version_policy=policy, **settings)
    return ServiceState(s, Metrics()).repository


def states(repo: ModelRepository) -> dict[int, str]:
    return {s.version: s.state for s in repo.index("testnet")}


async def classify(repo: ModelRepository, version: int | None = None) -> int:
    async with repo.lease("testnet", version) as served:
        result = await served.pipeline([PHOTO], top_k=1)
    return result.version


def test_policies_decide_what_is_served_and_the_newest_is_the_default(store):
    for _ in range(2):
        clone_version(store, "testnet", 1)

    async def scenario():
        repo = repository(store, "latest:2")
        await repo.start()
        try:
            assert states(repo) == {1: "UNAVAILABLE", 2: "READY", 3: "READY"}
            assert "not selected by the version policy latest:2" in repo.status("testnet", 1).reason
            assert await classify(repo) == 3 and await classify(repo, 2) == 2
            with pytest.raises(Exception, match="version 1 of model 'testnet' is not served"):
                await classify(repo, 1)
            repo.policies = Policies.parse("specific:1,3")
            await repo.sync()
            await repo.drain()
            assert states(repo) == {1: "READY", 2: "UNAVAILABLE", 3: "READY"}
            assert await classify(repo, 1) == 1
        finally:
            await repo.stop()

    asyncio.run(scenario())


def test_rollover_waits_for_the_requests_on_the_old_version(store):
    async def scenario():
        repo = repository(store)
        await repo.start()
        try:
            assert repo.ready and states(repo) == {1: "READY"}
            async with repo.lease("testnet", None) as old:  # a request that holds v1 ...
                clone_version(store, "testnet", 1)
                await repo.sync()  # ... while v2 is published and polled
                assert repo.ready and states(repo) == {1: "UNLOADING", 2: "READY"}
                assert await classify(repo) == 2  # new requests go to v2 at once
                result = await old.pipeline([PHOTO])  # the held one still finishes on v1
                assert result.version == 1 and old.model.session is not None
            await repo.drain()
            assert states(repo) == {1: "UNAVAILABLE", 2: "READY"}
            assert repo.index("testnet")[0].reason == "unloaded"
            assert old.model.session is None  # released only after its request ended
        finally:
            await repo.stop()

    asyncio.run(scenario())


def _publish_broken(store: Path, kind: str) -> int:
    version = clone_version(store, "testnet", 1, corrupt=kind == "sha256")
    folder = store / "testnet" / str(version)
    if kind == "metadata":
        (folder / "metadata.json").write_text("{not json")
    elif kind == "half-copied":
        onnx = folder / "model.onnx"
        data = onnx.read_bytes()
        onnx.unlink()  # a hard link to v1's file: replace it, never write through it
        onnx.write_bytes(data[: len(data) // 3])
    elif kind == "missing-file":
        (folder / "model.onnx").unlink()
    elif kind in ("interpolation", "crops"):  # values this service does not know: refused, never guessed at
        meta = json.loads((folder / "metadata.json").read_text())
        meta["preprocessing"][kind] = {"interpolation": "lanczos", "crops": "five"}[kind]
        (folder / "metadata.json").unlink()  # a fresh file, not a write through a hard link
        (folder / "metadata.json").write_text(json.dumps(meta))
    elif kind == "wrong-version":
        meta = json.loads((folder / "metadata.json").read_text())
        meta["version"] = 1
        (folder / "metadata.json").write_text(json.dumps(meta))
    return version


@pytest.mark.parametrize(("kind", "reason"), [
    ("sha256", "does not match metadata"), ("metadata", "not valid JSON"), ("half-copied", "does not match"),
    ("missing-file", "model.onnx is missing"), ("wrong-version", "describes testnet v1, not the folder testnet/2"),
    ("interpolation", "preprocessing.interpolation: 'lanczos' is not one of ('bilinear', 'bicubic')"),
    ("crops", "preprocessing.crops: 'five' is not one of ('ten', 'center')"),
])
def test_a_broken_version_never_takes_traffic(store, kind, reason):
    async def scenario():
        repo = repository(store)
        loads = []
        real = repo.factory.load
        repo.factory.load = lambda entry: (loads.append(entry.version), real(entry))[1]
        await repo.start()
        try:
            version = _publish_broken(store, kind)
            await repo.sync()
            assert states(repo) == {1: "READY", 2: "UNAVAILABLE"} and repo.ready
            status = repo.status("testnet", version)
            assert reason in status.reason and str(store) not in status.reason
            assert await classify(repo) == 1  # what was serving keeps serving
            attempts = len(loads)
            await repo.sync()  # an unchanged broken version is not tried again at every poll
            assert len(loads) == attempts
            if kind == "half-copied":  # the copy completes: its files change, so it is tried again and serves
                shutil.copyfile(store / "testnet" / "1" / "model.onnx", store / "testnet" / "2" / "model.onnx")
                await repo.sync()
                await repo.drain()
                assert states(repo) == {1: "UNAVAILABLE", 2: "READY"} and await classify(repo) == 2
        finally:
            await repo.stop()

    asyncio.run(scenario())


def test_explicit_unload_and_load(store):
    async def scenario():
        repo = repository(store)
        await repo.start()
        try:
            await repo.unload("testnet")
            assert states(repo) == {1: "UNAVAILABLE"} and not repo.ready
            with pytest.raises(Exception, match="unloaded; load it with POST"):
                await classify(repo)
            await repo.sync()  # polling leaves an unloaded model alone
            assert states(repo) == {1: "UNAVAILABLE"}
            clone_version(store, "testnet", 1)
            await repo.load("testnet")
            assert states(repo) == {1: "UNAVAILABLE", 2: "READY"} and repo.ready
            with pytest.raises(Exception, match="no model named 'nope'"):
                await repo.load("nope")
        finally:
            await repo.stop()

    asyncio.run(scenario())


def test_stopping_while_a_version_loads_waits_for_the_load(store):
    """The app stopped mid-load (SIGTERM while starting, a test leaving early): the shutdown waits for the
    loading thread instead of leaving it inside ONNX Runtime — a thread still there when the interpreter exits
    aborts the process (exit 134), which the test suite once did at its very end."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    s = cpu_settings(store, warmup_batch=1)
    real, started, finished = default_loader(s), threading.Event(), threading.Event()

    def slow_loader(entry):
        started.set()
        time.sleep(1.0)  # the app is told to stop during this
        model = real(entry)
        finished.set()
        return model

    with TestClient(create_app(s, loader=slow_loader)):
        assert started.wait(30)
    assert finished.is_set(), "the app stopped while its loading thread was still running"
    assert not [t.name for t in threading.enumerate() if t.name == "alexnet-load-low-priority"]


def default_loader(settings):
    """How the service opens a version with these settings (the one factory's loader)."""
    from service.metrics import Metrics
    from service.pipeline import PipelineFactory

    return PipelineFactory(settings.pipeline_config(), Metrics()).load
