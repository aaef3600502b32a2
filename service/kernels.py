"""The first convolution's kernels as a picture: the paper's Fig. 3 (``GET /v2/models/{m}/kernels.png``).

Read from the version's ONNX file, no PyTorch: the first ``Conv`` node of the graph (the exports are in
topological order, so it is the one the image enters) and its weight, an initializer — or a ``Constant``, or an
int8 initializer behind a ``DequantizeLinear`` (the INT8 versions), dequantised — of shape [O, C, kh, kw].

The picture, exactly (tests/test_kernels.py recomputes it from the weights):

- **Layout**: the paper's AlexNet (``architecture.grouped``: conv2 sees conv1's maps in two halves, the paper's two
  GPUs) is drawn in two rows of O/2 kernels, row g holding kernels g·O/2 … (g+1)·O/2 − 1 (the 48 of each GPU);
  any other network in a grid of ``columns = ceil(√O)`` columns, kernel j at row j // columns, column j % columns.
- **Each kernel scaled to its own range**: v = round(255 · (w − min) / (max − min)) over its C·kh·kw weights
  together (so the colours keep their balance; 0 where max = min), as uint8.
- **Colour**: 3 input channels are drawn as RGB (a BGR network's planes are reversed first,
  `preprocessing.channel_order`); 1 channel (the d2l networks) as grey, R = G = B = v; any other count as grey
  from its first channel.
- **Size**: each weight is a `scale` × `scale` block of pixels (default `DEFAULT_SCALE`); kernels are `GAP`
  pixels apart, with `GAP` pixels around the grid, on a white (255) background. Kernel j's weight (y, x) is the
  block whose top-left pixel is (GAP + row·(kh·scale + GAP) + y·scale, GAP + col·(kw·scale + GAP) + x·scale).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_SCALE = 4
MAX_SCALE = 16
GAP = 2
BACKGROUND = 255


class NoKernels(ValueError):
    """The network's first layer is not a convolution (or its weight is not a constant)."""


@dataclass(frozen=True)
class Kernels:
    weights: np.ndarray  # float32 [O, C, kh, kw], in the network's channel order
    node: str  # the Conv node's name


def _constant(graph, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if name in node.output:
            if node.op_type == "Constant":
                value = next((a for a in node.attribute if a.name == "value"), None)
                return None if value is None else numpy_helper.to_array(value.t)
            if node.op_type == "DequantizeLinear":
                x = _constant(graph, node.input[0])
                scale = _constant(graph, node.input[1])
                zero = _constant(graph, node.input[2]) if len(node.input) > 2 and node.input[2] else None
                if x is None or scale is None:
                    return None
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                shape = [1] * x.ndim
                if scale.ndim == 1 and scale.size > 1:
                    shape[axis] = scale.size
                zero_f = np.zeros(1, np.float32) if zero is None else zero.astype(np.float32).reshape(shape)
                return ((x.astype(np.float32) - zero_f) * scale.astype(np.float32).reshape(shape)).astype(np.float32)
            if node.op_type == "Identity":
                return _constant(graph, node.input[0])
            return None
    return None


def first_conv(onnx_path: Path) -> Kernels:
    import onnx

    model = onnx.load(str(onnx_path))
    conv = next((n for n in model.graph.node if n.op_type == "Conv"), None)
    if conv is None:
        raise NoKernels("the network has no convolution")
    weight = _constant(model.graph, conv.input[1])
    if weight is None or weight.ndim != 4:
        raise NoKernels(f"the first convolution's weight ({conv.input[1]}) is not a constant [O, C, kh, kw] tensor")
    return Kernels(weight.astype(np.float32), conv.name or conv.output[0])


def layout(count: int, grouped: bool) -> tuple[int, int]:
    """(rows, columns) of the picture."""
    if grouped and count % 2 == 0:
        return 2, count // 2
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def scaled(weights: np.ndarray) -> np.ndarray:
    """Each kernel min-max scaled to 0..255 on its own: uint8 [O, C, kh, kw]."""
    flat = weights.reshape(len(weights), -1).astype(np.float64)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    out = np.where(high > low, np.rint(255.0 * (flat - low) / span), 0.0)
    return out.astype(np.uint8).reshape(weights.shape)


def draw(weights: np.ndarray, *, grouped: bool, bgr: bool = False, scale: int = DEFAULT_SCALE) -> np.ndarray:
    """The picture as uint8 RGB [H, W, 3] (see the module's doc for the mapping)."""
    count, channels, kh, kw = weights.shape
    values = scaled(weights)
    rgb = (values[:, ::-1] if bgr else values) if channels == 3 else np.repeat(values[:, :1], 3, axis=1)
    tiles = rgb.transpose(0, 2, 3, 1).repeat(scale, axis=1).repeat(scale, axis=2)  # [O, kh·s, kw·s, 3]
    rows, columns = layout(count, grouped)
    th, tw = kh * scale, kw * scale
    picture = np.full((GAP + rows * (th + GAP), GAP + columns * (tw + GAP), 3), BACKGROUND, np.uint8)
    for j in range(count):
        r, c = divmod(j, columns)
        y, x = GAP + r * (th + GAP), GAP + c * (tw + GAP)
        picture[y:y + th, x:x + tw] = tiles[j]
    return picture


@functools.lru_cache(maxsize=8)
def kernels_png(onnx_path: str, sha256: str, grouped: bool, bgr: bool, scale: int) -> bytes:
    """The PNG of a version's kernels, cached per file and scale (`sha256` keys it to the file's contents)."""
    from PIL import Image

    kernels = first_conv(Path(onnx_path))
    buf = io.BytesIO()
    Image.fromarray(draw(kernels.weights, grouped=grouped, bgr=bgr, scale=scale), "RGB").save(buf, "PNG")
    return buf.getvalue()
