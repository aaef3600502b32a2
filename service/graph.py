"""The serving graph: the stored network wrapped so it takes uint8 patches and returns probabilities.

    images uint8 [N, crop, crop, 3] → Transpose → Cast → ×1/(255·std) − mean/std → network → Softmax
    → probabilities float32 [N, K]

Normalisation runs inside ONNX Runtime (on its thread pool, or on the GPU), so the service moves a quarter
of the bytes float32 patches would take, and any ONNX Runtime or Triton client can use the same graph
with only decoding and cropping on its side. The constants come from the model's metadata.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from alexnet_store import ModelMetadata

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


def build_serving_model(network: onnx.ModelProto, metadata: ModelMetadata) -> onnx.ModelProto:
    pre = metadata.preprocessing
    graph = network.graph
    net_input, net_output = metadata.onnx.input_name, metadata.onnx.output_name
    if [i.name for i in graph.input] != [net_input] or net_output not in [o.name for o in graph.output]:
        raise ValueError(
            f"ONNX graph I/O {[i.name for i in graph.input]} → {[o.name for o in graph.output]} does not match "
            f"the metadata ({net_input} → {net_output})"
        )
    std = np.asarray(pre.std, dtype=np.float32).reshape(1, 3, 1, 1)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    scale = numpy_helper.from_array((1.0 / (255.0 * std)).astype(np.float32), "serving_scale")
    shift = numpy_helper.from_array((mean / std).astype(np.float32), "serving_shift")
    front = [
        helper.make_node("Transpose", [INPUT_NAME], ["serving_nchw_u8"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["serving_nchw_u8"], ["serving_nchw"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["serving_nchw", "serving_scale"], ["serving_scaled"]),
        helper.make_node("Sub", ["serving_scaled", "serving_shift"], [net_input]),
    ]
    back = [helper.make_node("Softmax", [net_output], [OUTPUT_NAME], axis=-1)]

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(network)
    g = wrapped.graph
    nodes = front + list(g.node) + back
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend([scale, shift])
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.UINT8, ["batch", pre.crop_size, pre.crop_size, 3]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", metadata.num_classes]))
    return wrapped
