"""The features output (issue 20, the paper's section 6.1): the version's penultimate layer — AlexNet's fc7 after its
ReLU, 4096-d — served beside the probabilities, checked against an independent reference: PyTorch's own network
with a forward hook on fc8 (its input is fc7's activation), run on the same ten patches the service cut.

The served answer goes through a real uvicorn (the shared server) and the protocol's own client (tritonclient);
`/predict`'s option in-process; a version exported before features existed keeps serving and answers 400 with a
JSON body when features are asked of it.
"""

from __future__ import annotations

import base64
import dataclasses
import shutil
import time
import warnings

import numpy as np
import onnx
import pytest
import torch
from support.paths import SKLEARN_IMAGES
from support.settings import cpu_settings

from alexnet_store import ModelStore
from alexnet_store.store import sha256_of
from service.app import create_app
from service.preprocess import DecodeLimits, prepare_image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PHOTOS = [(SKLEARN_IMAGES / name).read_bytes() for name in ("china.jpg", "flower.jpg")]
TOLERANCE = 1e-4


def wait_ready(client: TestClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"not ready after {timeout} s: {client.get('/health/ready').json()}")


def torch_fc7(model, data: bytes, pre, scheme: str = "ten") -> np.ndarray:
    """fc7 (after ReLU) of each patch the service cuts from `data`, by PyTorch: a forward hook on fc8 takes its
    input. The patches are normalised here in numpy (the service does it inside its ONNX graph)."""
    patches = prepare_image(data, [scheme], pre.resize_size, pre.crop_size, DecodeLimits(50_000_000, True),
                            pre.interpolation).patches[scheme]
    x = (patches.astype(np.float32) / 255.0 - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    seen: list[torch.Tensor] = []
    handle = model.classifier[-1].register_forward_hook(lambda _m, args, _out: seen.append(args[0].clone()))
    try:
        with torch.inference_mode():
            model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    finally:
        handle.remove()
    return seen[0].numpy()


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """Within 1e-4 of the reference's scale (fc7 activations of the He-initialised net reach ~10)."""
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) <= TOLERANCE * scale, float(np.abs(got - want).max())


def test_metadata_records_the_features(exported):
    _, version, _ = exported
    features = version.metadata.onnx.features
    assert features is not None and features.name == "features" and features.dim == 4096
    assert "fc7" in features.layer
    parity = version.metadata.parity
    assert parity.features_max_rel_diff is not None and parity.features_max_rel_diff <= TOLERANCE
    names = [o.name for o in onnx.load(str(version.onnx_path)).graph.output]
    assert names == ["logits", "features"]


def test_tritonclient_features_equal_pytorch_fc7(exported, shared_server):
    import tritonclient.http as triton

    _, version, model = exported
    pre = version.metadata.preprocessing
    client = triton.InferenceServerClient(url=shared_server.url.removeprefix("http://"))
    try:
        meta = client.get_model_metadata("testnet")
        assert {"name": "features", "datatype": "FP32", "shape": [-1, 4096]} in meta["outputs"]
        image = triton.InferInput("image", [2, 1], "BYTES")
        image.set_data_from_numpy(np.array([[p] for p in PHOTOS], dtype=object), binary_data=True)
        result = client.infer("testnet", [image], outputs=[
            triton.InferRequestedOutput("probabilities", binary_data=True),
            triton.InferRequestedOutput("features", binary_data=True)])
        mean = result.as_numpy("features")
        assert mean.dtype == np.float32 and mean.shape == (2, 4096)
        centre = client.infer("testnet", [image], parameters={"crops": "center"}, outputs=[
            triton.InferRequestedOutput("features", binary_data=True)]).as_numpy("features")
    finally:
        client.close()
    # each patch's own (the output's "patches" parameter, which tritonclient's InferRequestedOutput cannot set)
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                        "data": [base64.b64encode(p).decode() for p in PHOTOS]}],
            "outputs": [{"name": "features", "parameters": {"patches": True}}]}
    with shared_server.client() as http:
        r = http.post("/v2/models/testnet/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["datatype"] == "FP32" and out["shape"] == [2, 10, 4096]
    per_patch = np.asarray(out["data"], np.float32).reshape(out["shape"])
    for i, photo in enumerate(PHOTOS):
        want = torch_fc7(model, photo, pre)
        assert_close(per_patch[i], want)
        assert_close(mean[i], want.mean(axis=0))
        assert_close(centre[i], torch_fc7(model, photo, pre, "center")[0])
    assert not np.allclose(mean[0], mean[1])  # two different photos: features that can tell them apart


def test_features_without_the_output_asked_are_not_sent(shared_server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=shared_server.url.removeprefix("http://"))
    try:
        image = triton.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[PHOTOS[0]]], dtype=object), binary_data=True)
        response = client.infer("testnet", [image]).get_response()
    finally:
        client.close()
    assert [o["name"] for o in response["outputs"]] == ["probabilities"]


def test_predict_option_matches_the_infer_output(exported, shared_server):
    _, version, model = exported
    with shared_server.client() as http:
        r = http.post("/predict", params={"features": "true", "details": "patches", "top_k": 3},
                      files=[("files", ("a.jpg", PHOTOS[0])), ("files", ("b.jpg", PHOTOS[1]))])
        assert r.status_code == 200, r.text
        plain = http.post("/predict", files={"file": ("a.jpg", PHOTOS[0])}).json()
    assert "features" not in plain["results"][0]
    for result, photo in zip(r.json()["results"], PHOTOS, strict=True):
        want = torch_fc7(model, photo, version.metadata.preprocessing)
        assert_close(np.asarray(result["features"], np.float32), want.mean(axis=0))
        per_patch = np.asarray([p["features"] for p in result["details"]["patches"]], np.float32)
        assert_close(per_patch, want)


def test_bad_feature_requests_are_400_json(shared_server):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(PHOTOS[0]).decode()]}]}
    with shared_server.client() as http:
        for outputs, needle in (
                ([{"name": "features", "parameters": {"classification": 3}}], "only the 'probabilities'"),
                ([{"name": "probabilities", "parameters": {"patches": True}}], "only the 'features'"),
                ([{"name": "fc6"}], "unknown output")):
            r = http.post("/v2/models/testnet/infer", json={**body, "outputs": outputs})
            assert r.status_code == 400 and needle in r.json()["error"], r.text


@pytest.fixture(scope="module")
def featureless(exported, tmp_path_factory):
    """A copy of the store whose newest version is what an export before issue 20 wrote: an ONNX file with the one
    output `logits` and metadata without onnx.features."""
    root, version, _ = exported
    copy = tmp_path_factory.mktemp("old-store")
    shutil.copytree(root / version.name, copy / version.name)
    store = ModelStore(copy)
    source = store.resolve(version.name, version.version)
    network = onnx.load(str(source.onnx_path))
    kept = [o for o in network.graph.output if o.name == "logits"]
    del network.graph.output[:]
    network.graph.output.extend(kept)
    with store.new_version(version.name) as staging:
        path = staging.path / source.metadata.onnx.file
        onnx.save(network, str(path))
        onnx_info = dataclasses.replace(source.metadata.onnx, features=None, sha256=sha256_of(path),
                                        bytes=path.stat().st_size)
        parity = dataclasses.replace(source.metadata.parity, features_max_abs_diff=None, features_max_rel_diff=None)
        old = staging.commit(lambda v: dataclasses.replace(source.metadata, version=v, onnx=onnx_info,
                                                           parity=parity))
    return copy, old


def test_a_version_without_features_keeps_serving(featureless, exported):
    root, old = featureless
    assert old.metadata.onnx.features is None
    with TestClient(create_app(cpu_settings(root))) as client:
        wait_ready(client)
        r = client.post("/predict", files={"file": ("a.jpg", PHOTOS[0])})
        assert r.status_code == 200 and r.json()["model"]["version"] == old.version, r.text
        r = client.post("/predict", params={"features": "true"}, files={"file": ("a.jpg", PHOTOS[0])})
        assert r.status_code == 400 and r.json()["reason"] == "no_features", r.text
        assert "no features output" in r.json()["detail"]
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "data": [base64.b64encode(PHOTOS[0]).decode()]}], "outputs": [{"name": "features"}]}
        r = client.post("/v2/models/testnet/infer", json=body)
        assert r.status_code == 400 and "no features output" in r.json()["error"], r.text
        r = client.post("/v2/models/testnet/search", json={**body, "outputs": [{"name": "neighbours"}]})
        assert r.status_code == 400 and "no features output" in r.json()["error"], r.text
        meta = client.get("/v2/models/testnet").json()
        assert [o["name"] for o in meta["outputs"]] == ["probabilities"]
        r = client.post("/v2/models/testnet/infer", json={**body, "outputs": [{"name": "probabilities"}]})
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 10]


@pytest.mark.parametrize("arch", ["alexnet", "d2l-alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet"])
def test_every_network_splits_at_its_penultimate_layer(arch):
    """What the export writes as the second output: the split's logits are the network's own forward, and its
    features are what the network's last layer is fed (a forward hook on it; NiN: its last block's input, which
    is averaged over its maps)."""
    from torch import nn

    from training.architectures import ARCHITECTURES, penultimate

    torch.manual_seed(0)
    spec = ARCHITECTURES[arch]
    model = spec.build(num_classes=10).eval()
    x = torch.randn(2, spec.in_channels, spec.input_size, spec.input_size)
    last = model.classifier[-1] if arch == "alexnet" else model[-1] if isinstance(model[-1], nn.Linear) else model[-3]
    seen: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda _m, args, _out: seen.append(args[0].clone()))
    with torch.inference_mode():
        want = model(x)
        logits, features = penultimate(model).eval()(x)
    handle.remove()
    torch.testing.assert_close(logits, want, rtol=0, atol=0)
    fed = seen[0] if seen[0].ndim == 2 else seen[0].mean(dim=(2, 3))
    torch.testing.assert_close(features, fed, rtol=0, atol=0)
    assert features.shape[0] == 2 and features.ndim == 2
