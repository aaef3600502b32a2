"""The Open Inference Protocol end to end: a real `alexnet-serve` (uvicorn) driven by the protocol's own clients,
tritonclient's HTTP client and KServe's InferenceRESTClient, against `POST /predict`'s answers."""

from __future__ import annotations

import asyncio
import base64
import signal

import httpx
import numpy as np
import pytest
from support.paths import SKLEARN_IMAGES
from support.server import start_server, stop_server

PHOTOS = [(SKLEARN_IMAGES / name).read_bytes() for name in ("china.jpg", "flower.jpg")]


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    root, _, _ = exported
    srv = start_server(root, tmp_path_factory.mktemp("v2") / "serve.log", "--providers", "CPUExecutionProvider",
                       env={"ALEXNET_REPOSITORY_POLL_SECONDS": "0"})
    yield srv
    assert stop_server(srv) in (0, -signal.SIGTERM), srv.log.read_text()


def predict(server, data: bytes, crops: str) -> np.ndarray:
    r = httpx.post(f"{server.url}/predict", params={"top_k": 10, "crops": crops}, files={"file": ("x.jpg", data)},
                   timeout=60)
    assert r.status_code == 200, r.text
    probs = np.zeros(10, np.float64)
    for p in r.json()["results"][0]["predictions"]:
        probs[p["index"]] = p["probability"]
    return probs


def test_tritonclient_http(server):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("testnet") and client.is_model_ready("testnet", "1")
        assert not client.is_model_ready("nope")
        meta = client.get_model_metadata("testnet")
        assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
        assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                                   {"name": "features", "datatype": "FP32", "shape": [-1, 4096]}]  # issue 20
        config = client.get_model_config("testnet")
        assert config["max_batch_size"] >= 2 and config["input"][0]["name"] == "image"

        image = triton.InferInput("image", [2, 1], "BYTES")
        image.set_data_from_numpy(np.array([[p] for p in PHOTOS], dtype=object), binary_data=True)
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=True, class_count=5)]
        result = client.infer("testnet", [image], outputs=outputs)
        top5 = result.as_numpy("probabilities")
        assert top5.shape == (2, 5)
        assert result.get_response()["model_version"] == "1"
        for row, photo in zip(top5, PHOTOS, strict=True):
            want = predict(server, photo, "ten")
            parsed = [s.decode().split(":") for s in row]
            assert [int(i) for _, i, _ in parsed] == list(np.argsort(-want, kind="stable")[:5])
            assert all(abs(float(p) - want[int(i)]) < 1e-6 for p, i, _ in parsed)

        full = client.infer("testnet", [image], model_version="1",
                            outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)])
        probs = full.as_numpy("probabilities")
        assert probs.dtype == np.float32 and probs.shape == (2, 10)
        for row, photo in zip(probs, PHOTOS, strict=True):
            np.testing.assert_allclose(row, predict(server, photo, "ten"), rtol=0, atol=1e-6)

        wrong = triton.InferInput("image", [1], "FP32")
        wrong.set_data_from_numpy(np.zeros(1, np.float32))
        with pytest.raises(InferenceServerException, match=r"inputs\[0\]\.datatype: expected BYTES"):
            client.infer("testnet", [wrong])
        index = client.get_model_repository_index()
        assert index == [{"name": "testnet", "version": "1", "state": "READY", "reason": ""}]
        client.unload_model("testnet")
        assert not client.is_model_ready("testnet") and not client.is_server_ready()
        with pytest.raises(InferenceServerException, match="no model named 'nope'"):
            client.load_model("nope")
        client.load_model("testnet")
        assert client.is_model_ready("testnet") and client.is_server_ready()
    finally:
        client.close()


def test_kserve_rest_client_with_base64_json(server):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def scenario():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        try:
            assert await client.is_server_live(server.url) and await client.is_server_ready(server.url)
            assert await client.is_model_ready(server.url, "testnet")
            image = InferInput(name="image", shape=[2], datatype="BYTES",
                               data=[base64.b64encode(p).decode() for p in PHOTOS])
            request = InferRequest(model_name="testnet", infer_inputs=[image], request_id="kserve-1",
                                   parameters={"crops": "center"})
            return await client.infer(server.url, request, model_name="testnet")
        finally:
            await client.close()

    response = asyncio.run(scenario())
    assert response.id == "kserve-1" and response.model_name == "testnet"
    (output,) = response.outputs
    probs = output.as_numpy()
    assert output.name == "probabilities" and probs.shape == (2, 10)
    for row, photo in zip(probs, PHOTOS, strict=True):
        np.testing.assert_allclose(row, predict(server, photo, "center"), rtol=0, atol=1e-6)
