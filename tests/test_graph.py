"""The serving graph built from metadata: RGB networks normalise per channel; 1-channel networks get the luma.

The network here is a hand-made ONNX graph (flatten → matrix product), so the expected probabilities are plain
NumPy arithmetic written out in the test, independent of the graph's code.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from alexnet_store import Label, ModelMetadata, OnnxInfo, Preprocessing
from alexnet_store.metadata import Architecture
from service.graph import GRAPH_INPUT, GRAPH_OUTPUT, build_serving_model

SIZE, CLASSES = 6, 4


def linear_network(channels: int, weight: np.ndarray) -> onnx.ModelProto:
    """logits = flatten(input) @ weight: input float [N, channels, SIZE, SIZE] named as exports name it."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, SIZE, SIZE])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "linear", [x], [y], [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def metadata(pre: Preprocessing) -> ModelMetadata:
    labels = tuple(Label(str(i), str(i)) for i in range(CLASSES))
    return ModelMetadata(name="t", version=1, created_at="", labels=labels,
                         architecture=Architecture(name="linear", num_classes=CLASSES, parameters=0),
                         preprocessing=pre, onnx=OnnxInfo(file="model.onnx", sha256="", opset=18))


def serve(channels: int, pre: Preprocessing, patches: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    weight = np.random.default_rng(seed).standard_normal((channels * SIZE * SIZE, CLASSES)).astype(np.float32)
    serving = build_serving_model(linear_network(channels, weight), metadata(pre))
    onnx.checker.check_model(serving)
    session = ort.InferenceSession(serving.SerializeToString(), providers=["CPUExecutionProvider"])
    (probs,) = session.run([GRAPH_OUTPUT], {GRAPH_INPUT: patches})
    return probs, weight


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_rgb_networks_are_normalised_per_channel() -> None:
    patches = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    pre = Preprocessing(resize_size=SIZE, crop_size=SIZE, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    probs, weight = serve(3, pre, patches)
    x = patches.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    x = (x - np.array([0.4, 0.5, 0.6])[None, :, None, None]) / np.array([0.2, 0.25, 0.3])[None, :, None, None]
    np.testing.assert_allclose(probs, softmax(x.reshape(3, -1) @ weight), rtol=1e-4, atol=1e-6)


def test_one_channel_networks_see_the_luma() -> None:
    """Y = 0.299 R + 0.587 G + 0.114 B (Pillow's "L" and ITU-R 601-2), then (Y/255 − mean) / std."""
    rng = np.random.default_rng(2)
    patches = rng.integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    pre = Preprocessing(resize_size=SIZE, crop_size=SIZE, mean=(0.2860,), std=(0.3530,), input_channels=1)
    probs, weight = serve(1, pre, patches)
    r, g, b = (patches[..., c].astype(np.float64) for c in range(3))
    y = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
    x = (y - 0.2860) / 0.3530
    np.testing.assert_allclose(probs, softmax(x.reshape(5, -1) @ weight), rtol=1e-4, atol=1e-6)
    # A grey upload (decoded to R = G = B) reaches the network as its own grey level.
    grey = np.repeat(rng.integers(0, 256, (2, SIZE, SIZE, 1), dtype=np.uint8), 3, axis=3)
    probs, weight = serve(1, pre, grey, seed=3)
    x = (grey[..., 0] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(probs, softmax(x.reshape(2, -1) @ weight), rtol=1e-4, atol=1e-6)
    # And Pillow's own conversion agrees to within its integer rounding.
    from PIL import Image

    pillow = np.stack([np.asarray(Image.fromarray(p).convert("L"), np.float64) for p in patches]) / 255.0
    assert np.abs(pillow - y).max() <= 0.5 / 255 + 1e-9


def test_the_graph_checks_its_network() -> None:
    pre = Preprocessing(resize_size=SIZE, crop_size=SIZE, mean=(0.5,), std=(0.5,), input_channels=1)
    network = linear_network(1, np.zeros((SIZE * SIZE, CLASSES), np.float32))
    network.graph.input[0].name = "pixels"
    with pytest.raises(ValueError, match="does not match the metadata"):
        build_serving_model(network, metadata(pre))
