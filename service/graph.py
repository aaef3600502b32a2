"""The serving graph: the stored network wrapped so it takes uint8 patches and returns probabilities.

    images uint8 [N, crop, crop, 3] → Transpose → (BGR: Gather) → Cast → normalise → network → Softmax
    → probabilities float32 [N, K]

Normalisation runs inside ONNX Runtime (on its thread pool, or on the GPU), so the service moves a quarter
of the bytes float32 patches would take, and any ONNX Runtime or Triton client can use the same graph
with only decoding and cropping on its side. The constants come from the model's metadata
(`preprocessing.input_channels`, `mean`, `std`), so the same code serves every network:

- 3 input channels (RGB): ×1/(255·std) − mean/std, per channel (Mul, Sub); a network that takes BGR
  (`preprocessing.channel_order`, Caffe's models) gets the channel planes reversed first (a Gather of the
  uint8 planes), and one that takes pixels in [0, 255] (`pixel_range` "0-255") is scaled by 1/std instead
  of 1/(255·std) (mean and std are in the network's channel order and pixel units);
- 1 input channel (the d2l book's Fashion-MNIST networks): the luma of the RGB patch,
  Y = 0.299 R + 0.587 G + 0.114 B (`alexnet_store.LUMA_WEIGHTS`: Pillow's convert("L"), torchvision's
  Grayscale to 1e-4), normalised in the same step: one 1×1 Conv with weights LUMA/(255·std) and bias −mean/std.
  The weights sum to 1, so a grey upload (decoded to R = G = B) reaches the network as its own grey level:
  what the network was trained on.

A network whose graph ends in its own softmax (`onnx.output_kind` "probabilities", an imported ONNX classifier)
gets no second one: its output is the serving graph's.

A version whose metadata names its penultimate layer (`onnx.features`: the paper's fc7 after its ReLU, the d2l
networks' pooled features; issue 20) gets a second output, ``features`` float32 [N, D], that tensor as the network
computes it in the same run (an Identity: nothing is computed twice). Older versions have the one output.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from alexnet_store import ModelMetadata
from alexnet_store.metadata import LUMA_WEIGHTS
from alexnet_store.vocabulary import PIXEL_MAX

GRAPH_INPUT = "images"
GRAPH_OUTPUT = "probabilities"
GRAPH_FEATURES = "features"


def _normalise(pre, net_input: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes from float NCHW pixels in [0, 255] ("serving_nchw", in the network's channel order) to the network's
    normalised input."""
    std = np.asarray(pre.std, dtype=np.float64)
    mean = np.asarray(pre.mean, dtype=np.float64)
    divisor = 255.0 / PIXEL_MAX[pre.pixel_range]  # uint8 value → the network's pixel units
    if pre.input_channels == 1:
        weight = (np.asarray(LUMA_WEIGHTS, np.float64) / (divisor * std[0])).reshape(1, 3, 1, 1)
        tensors = [numpy_helper.from_array(weight.astype(np.float32), "serving_luma_weight"),
                   numpy_helper.from_array((-mean / std).astype(np.float32), "serving_luma_bias")]
        return [helper.make_node("Conv", ["serving_nchw", "serving_luma_weight", "serving_luma_bias"], [net_input],
                                 kernel_shape=[1, 1])], tensors
    if pre.input_channels != 3:
        raise ValueError(f"preprocessing.input_channels {pre.input_channels} is not 1 or 3")
    std32, mean32 = std.astype(np.float32).reshape(1, 3, 1, 1), mean.astype(np.float32).reshape(1, 3, 1, 1)
    scale = (1.0 / (np.float32(divisor) * std32)).astype(np.float32)
    shift = (mean32 / std32).astype(np.float32)
    tensors = [numpy_helper.from_array(scale, "serving_scale"), numpy_helper.from_array(shift, "serving_shift")]
    return [helper.make_node("Mul", ["serving_nchw", "serving_scale"], ["serving_scaled"]),
            helper.make_node("Sub", ["serving_scaled", "serving_shift"], [net_input])], tensors


def build_serving_model(network: onnx.ModelProto, metadata: ModelMetadata) -> onnx.ModelProto:
    pre = metadata.preprocessing
    graph = network.graph
    net_input, net_output = metadata.onnx.input_name, metadata.onnx.output_name
    if [i.name for i in graph.input] != [net_input] or net_output not in [o.name for o in graph.output]:
        raise ValueError(
            f"ONNX graph I/O {[i.name for i in graph.input]} → {[o.name for o in graph.output]} does not match "
            f"the metadata ({net_input} → {net_output})"
        )
    normalise, constants = _normalise(pre, net_input)
    front = [helper.make_node("Transpose", [GRAPH_INPUT], ["serving_nchw_u8"], perm=[0, 3, 1, 2])]
    ordered = "serving_nchw_u8"
    if pre.channel_order == "BGR":  # the three uint8 planes in reverse order: three plane copies
        constants.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "serving_bgr"))
        front.append(helper.make_node("Gather", ["serving_nchw_u8", "serving_bgr"], ["serving_bgr_u8"], axis=1))
        ordered = "serving_bgr_u8"
    front += [helper.make_node("Cast", [ordered], ["serving_nchw"], to=TensorProto.FLOAT), *normalise]
    last = "Identity" if metadata.onnx.output_kind == "probabilities" else "Softmax"
    back = [helper.make_node(last, [net_output], [GRAPH_OUTPUT], **({} if last == "Identity" else {"axis": -1}))]

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(network)
    g = wrapped.graph
    nodes = front + list(g.node) + back
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(constants)
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(
        GRAPH_INPUT, TensorProto.UINT8, ["batch", pre.crop_size, pre.crop_size, 3]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(GRAPH_OUTPUT, TensorProto.FLOAT, ["batch", metadata.num_classes]))
    features = metadata.onnx.features
    if features is not None:
        _expose_features(g, features.name, features.dim)
    return wrapped


def _expose_features(g: onnx.GraphProto, name: str, dim: int) -> None:
    """The network's tensor `name` as the graph output ``features`` (the tensor renamed first when the network
    itself calls it ``features``, as the exports made here do)."""
    if not any(name in node.output for node in g.node):
        raise ValueError(f"the ONNX graph computes no tensor {name!r} (metadata onnx.features.name)")
    if name == GRAPH_FEATURES:
        renamed = "network_" + name
        for node in g.node:
            node.input[:] = [renamed if i == name else i for i in node.input]
            node.output[:] = [renamed if o == name else o for o in node.output]
        for info in g.value_info:
            if info.name == name:
                info.name = renamed
        name = renamed
    g.node.append(helper.make_node("Identity", [name], [GRAPH_FEATURES]))
    g.output.append(helper.make_tensor_value_info(GRAPH_FEATURES, TensorProto.FLOAT, ["batch", dim]))
