"""The values of the service's defaults that must be readable without pydantic.

`alexnet-eval`'s in-process backend runs where only ONNX Runtime is installed (the GPU machine: no pydantic), and
opens its model exactly as the service would; so these few values live here, `Settings` (service/settings.py)
declares its fields with them, and nothing else holds a default of its own.
"""

from __future__ import annotations

MAX_PIXELS = 50_000_000  # ALEXNET_MAX_PIXELS: a 12 MP photo is 12 M; anything far larger is a decompression bomb
JPEG_DRAFT = True  # ALEXNET_JPEG_DRAFT
INTRA_OP_THREADS = 0  # ALEXNET_INTRA_OP_THREADS: ORT's own choice (one per physical core)
INTRA_OP_SPINNING = False  # ALEXNET_INTRA_OP_SPINNING
CPU_REORDER_ELISION = True  # ALEXNET_CPU_REORDER_ELISION
CUDNN_CONV_ALGO_SEARCH = "HEURISTIC"  # ALEXNET_CUDNN_CONV_ALGO_SEARCH
INSTANCES = 1  # ALEXNET_INSTANCES: one session takes every run (docs/benchmark.md measures the instance group)
