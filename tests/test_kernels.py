"""The first convolution's kernels as a picture (issue 20, the paper's Fig. 3): `GET /v2/models/{m}/kernels.png` from
a real uvicorn, its pixels recomputed here from PyTorch's own conv1 weights by the mapping service/kernels.py
documents — two rows of 48 for the grouped AlexNet, kernel j at row j // 48, column j % 48; each kernel min-max
scaled to 0..255 over its own 363 weights; each weight a scale×scale block; 2 white pixels between kernels.
Small hand-built ONNX graphs cover the other layouts: a 1-channel network in a square grid, an INT8 weight behind
DequantizeLinear, a network without a convolution."""

from __future__ import annotations

import io
import math

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.kernels import GAP, NoKernels, draw, first_conv


def reference_scaled(kernel: np.ndarray) -> np.ndarray:
    """One kernel scaled to its own range, in float64 with Python's rounding of each value (0 where max = min)."""
    low, high = float(kernel.min()), float(kernel.max())
    if high == low:
        return np.zeros(kernel.shape, np.int64)
    return np.vectorize(lambda w: round(255 * (w - low) / (high - low)))(kernel.astype(np.float64))


def check_picture(picture: np.ndarray, weights: np.ndarray, rows: int, columns: int, scale: int) -> None:
    count, channels, kh, kw = weights.shape
    assert picture.shape == (GAP + rows * (kh * scale + GAP), GAP + columns * (kw * scale + GAP), 3)
    covered = np.zeros(picture.shape[:2], bool)
    for j in range(count):
        r, c = j // columns, j % columns
        want = reference_scaled(weights[j])  # [C, kh, kw]
        rgb = want if channels == 3 else np.repeat(want[:1], 3, axis=0)
        for y in range(kh):
            for x in range(kw):
                top, left = GAP + r * (kh * scale + GAP) + y * scale, GAP + c * (kw * scale + GAP) + x * scale
                block = picture[top:top + scale, left:left + scale]
                assert (block == rgb[:, y, x]).all(), (j, y, x, block[0, 0], rgb[:, y, x])
                covered[top:top + scale, left:left + scale] = True
    assert (picture[~covered] == 255).all()  # the gaps, the border and any empty cells are white


def test_served_kernels_are_conv1_scaled_per_kernel(exported, shared_server):
    _, version, model = exported
    assert version.metadata.architecture.grouped
    weights = model.features[0].weight.detach().numpy()
    assert weights.shape == (96, 3, 11, 11)
    for scale in (4, 1):
        r = httpx.get(f"{shared_server.url}/v2/models/testnet/kernels.png", params={"scale": scale}, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        img = Image.open(io.BytesIO(r.content))
        assert img.format == "PNG" and img.mode == "RGB"
        check_picture(np.asarray(img), weights, rows=2, columns=48, scale=scale)
    r = httpx.get(f"{shared_server.url}/v2/models/testnet/versions/1/kernels.png", timeout=60)
    assert r.status_code == 200
    for bad in ({"scale": 0}, {"scale": 17}, {"scale": "big"}):
        r = httpx.get(f"{shared_server.url}/v2/models/testnet/kernels.png", params=bad, timeout=60)
        assert r.status_code == 422 and r.json(), r.text
    r = httpx.get(f"{shared_server.url}/v2/models/nope/kernels.png", timeout=60)
    assert r.status_code == 404 and "nope" in r.json()["error"]


def graph_file(tmp_path, nodes, initializers, name="net.onnx"):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializers),
                              opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_one_channel_network_in_a_square_grid(tmp_path):
    weights = np.random.default_rng(0).standard_normal((6, 1, 5, 5)).astype(np.float32)
    weights[3] = 0.25  # a constant kernel: max = min, drawn as 0
    path = graph_file(tmp_path, [helper.make_node("Conv", ["input", "w"], ["logits"], name="conv1")],
                      [numpy_helper.from_array(weights, "w")])
    kernels = first_conv(path)
    assert kernels.node == "conv1"
    np.testing.assert_array_equal(kernels.weights, weights)
    check_picture(draw(kernels.weights, grouped=False, scale=3), weights, rows=2, columns=math.ceil(math.sqrt(6)),
                  scale=3)


def test_int8_weights_are_dequantised(tmp_path):
    q = np.random.default_rng(1).integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    scale = np.asarray([0.02, 0.5, 0.001, 3.0], np.float32)
    zero = np.asarray([0, 3, -2, 1], np.int8)
    path = graph_file(tmp_path, [
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], axis=0),
        helper.make_node("Conv", ["input", "w"], ["logits"])],
        [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")])
    want = (q.astype(np.float64) - zero.reshape(4, 1, 1, 1)) * scale.reshape(4, 1, 1, 1)
    np.testing.assert_allclose(first_conv(path).weights, want, rtol=1e-6)
    check_picture(draw(first_conv(path).weights, grouped=True, scale=2), want.astype(np.float32), 2, 2, 2)


def test_no_convolution_is_refused(tmp_path):
    path = graph_file(tmp_path, [helper.make_node("Relu", ["input"], ["logits"])], [])
    with pytest.raises(NoKernels, match="no convolution"):
        first_conv(path)
