"""Admission control (service/admission.py): the budget's arithmetic, and a request refused before its body is read."""

from __future__ import annotations

import asyncio
import time
import warnings

import pytest
from support.app import asgi_post, reuse
from support.paths import SKLEARN_IMAGES
from support.settings import cpu_settings

from service.admission import MIB, Admission, default_limits
from service.app import create_app
from service.errors import Overloaded

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PHOTO = (SKLEARN_IMAGES / "china.jpg").read_bytes()


def test_budget_arithmetic():
    a = Admission(max_bytes=1000, max_images=4, retry_after=3)
    with a.ticket(600) as first:
        first.charge_images(3)
        with pytest.raises(Overloaded) as info, a.ticket(500):
            pass
        assert info.value.headers["Retry-After"] == "3" and "600 bytes" in info.value.detail
        assert (a.bytes, a.images, a.requests) == (600, 3, 1)  # the refused one gave back nothing it did not take
        with a.ticket(None) as chunked:  # no Content-Length: charged as the body streams in
            chunked.received(300)
            chunked.received(400)
            assert a.bytes == 1000
            with pytest.raises(Overloaded, match="images"):
                chunked.charge_images(2)
            with pytest.raises(Overloaded, match="bytes"):
                chunked.received(401)
        assert (a.bytes, a.images) == (600, 3)
    assert (a.bytes, a.images, a.requests) == (0, 0, 0)
    with a.ticket(5000) as alone:  # larger than the whole budget but alone: admitted, never starved
        alone.charge_images(10)
    assert (a.bytes, a.images) == (0, 0)


def test_defaults_follow_the_memory():
    assert default_limits(24 * 1024 * MIB) == (256 * MIB, 64)
    assert default_limits(64 * 1024 * MIB) == (256 * MIB, 128)
    assert default_limits(2 * 1024 * MIB) == (64 * MIB, 16)
    assert default_limits(512 * MIB) == (32 * MIB, 16)


async def post(app, body: bytes, headers: dict[str, str]) -> tuple[int, dict, dict, int]:
    status, body_json, response_headers, read = await asgi_post(app, headers, [body], with_headers=True)
    return status, body_json, response_headers, read


def multipart(*files: bytes) -> tuple[bytes, dict[str, str]]:
    parts = b"".join(b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="p%d.jpg"\r\n\r\n' % i + f
                     + b"\r\n" for i, f in enumerate(files))
    body = parts + b"--xyz--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=xyz", "content-length": str(len(body))}


def test_over_budget_is_503_before_the_body_is_read(exported, loaded_model):
    root, _, _ = exported
    settings = cpu_settings(root, max_inflight_bytes=len(PHOTO) * 3, max_inflight_images=2, retry_after_seconds=2)
    app = create_app(settings, loader=reuse(loaded_model))  # the session's loaded model: no second load

    async def scenario():
        state = app.state.service
        await state.start()
        try:
            admission = state.admission
            one = multipart(PHOTO)
            with admission.ticket(len(PHOTO) * 2 - 1000):  # another request's body already held
                status, body, headers, read = await post(app, *multipart(PHOTO, PHOTO))
                assert (status, body["reason"], headers["retry-after"], read) == (503, "overloaded", "2", 0)
                assert "bytes" in body["detail"]
                status, _, _, read = await post(app, *one)  # a small one still fits
                assert status == 200 and read == len(one[0])
            with admission.ticket(1) as other:
                other.charge_images(1)  # another request's image already held: two more do not fit
                status, body, _, _ = await post(app, *multipart(PHOTO, PHOTO))
                assert status == 503 and "images" in body["detail"]
            status, body, _, _ = await post(app, *multipart(PHOTO, PHOTO))  # alone again: admitted
            assert status == 200 and len(body["results"]) == 2
            assert (admission.bytes, admission.images, admission.requests) == (0, 0, 0)
            text = state.metrics.exposition()[0].decode()
            assert 'alexnet_admission_rejected_total{resource="bytes"} 1.0' in text
            assert 'alexnet_admission_rejected_total{resource="images"} 1.0' in text
        finally:
            await state.stop()

    asyncio.run(scenario())


def test_v2_infer_is_admitted_too(exported, loaded_model):
    root, _, _ = exported
    settings = cpu_settings(root, max_inflight_images=1)
    with TestClient(create_app(settings, loader=reuse(loaded_model))) as c:
        deadline = time.monotonic() + 60
        while c.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        import base64

        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "data": [base64.b64encode(PHOTO).decode()]}]}
        with c.app.state.service.admission.ticket(1) as other:
            other.charge_images(1)
            r = c.post("/v2/models/testnet/infer", json=body)
            assert r.status_code == 503 and set(r.json()) == {"error"} and "images" in r.json()["error"]
        assert c.post("/v2/models/testnet/infer", json=body).status_code == 200


def test_memory_is_reclaimed_once_after_work_when_idle(exported, loaded_model):
    """After a request, once nothing has been in flight for reclaim_idle_seconds, each loaded version's arena is
    shrunk (ClassifierModel.release_memory) — once, not again while the service stays idle."""
    root, _, _ = exported
    released = []
    base = reuse(loaded_model)

    def loader(version):
        model = base(version)
        model.release_memory = lambda: released.append(time.monotonic())  # the session is shared: count only
        return model

    settings = cpu_settings(root, reclaim_idle_seconds=0.5)
    with TestClient(create_app(settings, loader=loader)) as c:
        deadline = time.monotonic() + 60
        while c.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.5)
        assert released == []  # loading and probes are not work
        assert c.post("/predict", files={"file": ("a.jpg", PHOTO)}).status_code == 200
        done = time.monotonic()
        # reclaimed 0.5 s after the work, checked with a margin for a loaded 2-core machine: up to 6 s (3× the 2 s
        # this test once slept), polling, so an idle machine goes on as soon as the one reclaim has happened
        while not released and time.monotonic() - done < 6.0:
            time.sleep(0.05)
        assert len(released) == 1 and released[0] - done >= 0.5
        time.sleep(max(1.5, done + 3.5 - time.monotonic()))  # idle for 3.5 s after the work, as before: no second
        assert len(released) == 1
