"""The service in process: a loader that reuses a loaded session, version clones, a raw ASGI POST, `classify`."""

from __future__ import annotations

import threading
from pathlib import Path


def reuse(loaded, gate: threading.Event | None = None):
    """A repository loader that waits for `gate`, then hands out the already loaded session (no second load)."""

    from service.model import ClassifierModel

    def load(version):
        if gate is not None:
            gate.wait(30)
        model = ClassifierModel(version, providers=["CPUExecutionProvider"])
        model.session = loaded.session
        return model

    return load


def clone_version(root: Path, name: str, source: int, *, corrupt: bool = False) -> int:
    """Publish a copy of `name` v`source` as its next version (`ModelStore.publish_copy`: staged, atomic). The
    copy answers exactly like the source, so only the `version` in answers tells them apart. With `corrupt`, one
    byte of the ONNX file is flipped after the checksum was taken (a damaged copy)."""
    import dataclasses

    from alexnet_store import ModelStore

    store = ModelStore(root)
    src = store.resolve(name, source)
    if not corrupt:
        return store.publish_copy(src).version
    with store.new_version(name) as staging:
        data = bytearray(src.onnx_path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        (staging.path / src.metadata.onnx.file).write_bytes(bytes(data))
        return staging.commit(lambda v: dataclasses.replace(src.metadata, version=v)).version


async def asgi_post(app, headers: dict[str, str], chunks, path: str = "/predict", *, with_headers: bool = False):
    """POST straight into an ASGI app, the body in `chunks`; returns the status, the JSON answer (and, with
    `with_headers`, the answer's headers) and how many body bytes the app read: what limits and admission
    control are judged by."""
    import asyncio
    import json

    consumed = 0
    iterator = iter(chunks)
    response: dict = {"body": b"", "headers": {}}
    ended = False

    async def receive():
        nonlocal consumed, ended
        if ended:
            await asyncio.sleep(3600)  # a client that has sent everything waits for the answer
        try:
            chunk = next(iterator)
        except StopIteration:
            ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            response["status"] = message["status"]
            response["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            response["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "server": ("test", 80), "client": ("test", 1),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    await app(scope, receive, send)
    body = json.loads(response["body"])
    if with_headers:
        return response["status"], body, response["headers"], consumed
    return response["status"], body, consumed


def classify(model, images: list[bytes], *, schemes=("ten",), top_k: int = 5):
    """The service's composition for a loaded model, synchronously: a pipeline from the one factory (the service's
    default settings, one run per call, no queue limit), one call in its own event loop."""
    import asyncio

    from service.metrics import Metrics
    from service.pipeline import PipelineFactory
    from service.settings import Settings

    settings = Settings.model_construct(batching=False, max_queued_inferences=0)
    pipeline = PipelineFactory(settings.pipeline_config(), Metrics()).pipeline(model)
    return asyncio.run(pipeline(images, schemes=schemes, top_k=top_k, all_or_nothing=False))
