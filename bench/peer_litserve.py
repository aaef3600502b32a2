"""THE LITSERVE PEER — not part of the service: the same model version served by LitServe, for `alexnet-bench --peers`.

    python -m bench.peer_litserve --model-store STORE --model-name NAME --model-version V --crops ten \\
        --port 8100 --threads 2 --max-batch-size 8 --batch-timeout-ms 1
    curl -F file=@photo.jpg http://127.0.0.1:8100/predict      # → {"predictions": [{"index", "probability"} × 5]}

What it is, and why it is a fair peer (docs/benchmark.md, "Peers"):

- **the same model**: ONNX Runtime (CPU) on the version's model.onnx wrapped exactly as the service serves it,
  by the service's own builder (`service.graph.build_serving_model`: uint8 NHWC patches in, normalisation and
  softmax inside, input ``images``, output ``probabilities``): bit for bit the graph the service runs. The session
  is a plain `InferenceSession`, as a LitServe user opens one, with the service's intra-op thread count (all
  cores) and spinning setting; the service's own rewrite of that graph (the LRN's layout reorders removed,
  service/session.py) is not applied: it is part of what the service adds.
- **decode and crops written the plain LitServe way, with Pillow and numpy**, not the service's
  service/preprocess.py: ``Image.open(...).convert("RGB")``, the shorter side resized to the model's resize size
  (Pillow's antialiased filter the model's metadata names: what torchvision's ``Resize`` calls on a PIL image),
  the central square, then torchvision's ten crops (four corners and the centre, of the square and of its
  mirror image) or the centre crop by numpy slicing. Reusing the service's preprocessing (its JPEG draft
  decoding, its one-copy crop cutter, its decode thread pool) would make this peer the service in disguise; what
  these steps cost in LitServe's idiom is part of the comparison. On an image that needs no draft decoding (the
  shorter side under twice the resize size) the patches are pixel for pixel the service's.
- **LitServe's own batching**: ``max_batch_size`` = the service's batch cap in images
  (``ALEXNET_MAX_BATCH_PATCHES`` ÷ patches per image: 80 → 8 ten-crop images, 80 centre crops), ``batch_timeout``
  = the service's ``ALEXNET_MAX_BATCH_DELAY_MS``, but at least 1 ms: at 0 LitServe's batched loop polls its queue
  without blocking (``get_nowait`` in a loop) and so spins a core the model needs, while 1 ms makes it block;
  one worker (``workers_per_device=1``), one API server, on the CPU. As LitServe's loop does, the images of a
  batch are decoded one after the other in the worker (`decode_request`), then run in one ONNX Runtime call;
  the ten crops' probabilities are averaged per image and the top 5 answered.
- one crop scheme per server: the benchmark starts it once per crops mode, so each gets its own batch cap.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import litserve as ls
import numpy as np
from PIL import Image

RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
TOP_K = 5


def ten_crops(data: bytes, resize: int, crop: int, interpolation: str, crops: str) -> np.ndarray:
    """Image bytes → uint8 [10 or 1, crop, crop, 3]: Resize(resize), CenterCrop(resize), TenCrop(crop) / CenterCrop."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize(size, RESAMPLING[interpolation])
    left, top = round((size[0] - resize) / 2), round((size[1] - resize) / 2)
    square = np.asarray(image.crop((left, top, left + resize, top + resize)))
    c = round((resize - crop) / 2)
    if crops == "center":
        return square[None, c:c + crop, c:c + crop]
    patches = []
    for img in (square, square[:, ::-1]):  # the square, then its mirror image (torchvision's TenCrop order)
        patches += [img[:crop, :crop], img[:crop, -crop:], img[-crop:, :crop], img[-crop:, -crop:],
                    img[c:c + crop, c:c + crop]]
    return np.stack(patches)


class AlexNetAPI(ls.LitAPI):
    def __init__(self, model_store: str, name: str, version: int, crops: str, threads: int, spinning: bool,
                 **batching) -> None:
        super().__init__(**batching)
        self.where = (model_store, name, version)
        self.crops, self.threads, self.spinning = crops, threads, spinning

    def setup(self, device: str) -> None:
        import onnx
        import onnxruntime as ort

        from alexnet_store import ModelStore
        from service.graph import GRAPH_INPUT, GRAPH_OUTPUT, build_serving_model

        store, name, version = self.where
        v = ModelStore(store).resolve(name, version)
        pre = v.metadata.preprocessing
        self.resize, self.crop, self.interpolation = pre.resize_size, pre.crop_size, pre.interpolation
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        graph = build_serving_model(onnx.load(str(v.onnx_path)), v.metadata).SerializeToString()
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.input, self.output = GRAPH_INPUT, GRAPH_OUTPUT
        self.per_image = 10 if self.crops == "ten" else 1

    def decode_request(self, request) -> np.ndarray:
        return ten_crops(request["file"].file.read(), self.resize, self.crop, self.interpolation, self.crops)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        (probs,) = self.session.run([self.output], {self.input: np.ascontiguousarray(x)})
        return probs.reshape(-1, self.per_image, probs.shape[-1]).mean(axis=1)  # softmax, averaged per image

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, probs: np.ndarray) -> dict:
        probs = np.asarray(probs).reshape(-1)  # [K] (a batch's row) or [1, K] (max_batch_size 1: no batching)
        top = np.argsort(-probs, kind="stable")[:TOP_K]
        return {"predictions": [{"index": int(i), "probability": float(probs[i])} for i in top]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peer_litserve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-store", type=Path, required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--model-version", type=int, required=True)
    p.add_argument("--crops", choices=["ten", "center"], default="ten")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--threads", type=int, required=True, help="ONNX Runtime intra-op threads")
    p.add_argument("--spinning", action="store_true", help="ONNX Runtime's idle threads spin")
    p.add_argument("--max-batch-size", type=int, required=True, help="images per model run, at most")
    p.add_argument("--batch-timeout-ms", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=120.0, help="LitServe's request timeout (seconds)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    api = AlexNetAPI(str(args.model_store), args.model_name, args.model_version, args.crops, args.threads,
                     args.spinning, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=args.timeout)
    server.run(host=args.host, port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
