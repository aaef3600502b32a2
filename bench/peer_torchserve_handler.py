"""THE TORCHSERVE PEER'S HANDLER — not part of the service: packaged into alexnet.mar by `alexnet-bench --peers`
(bench/peers.py `torchserve_server`), run by TorchServe's Python worker. It imports nothing from this repository.

    curl -T photo.jpg http://127.0.0.1:PORT/predictions/alexnet     # → {"predictions": [{"index", "probability"} × 5]}

What it is, and why it is a fair peer (docs/benchmark.md, "Peers"):

- **the same network**: a TorchScript (``torch.jit.trace``) of the PyTorch module whose ONNX export is the
  service's model version (bench/peers.py `torch_network`: the benchmark's own random-init paper network, rebuilt
  from the seed its metadata records, or the version's training checkpoint), run eagerly by PyTorch on the CPU;
- **a custom handler as TorchServe's image classifiers are written** (a `BaseHandler` with preprocess, inference and
  postprocess): Pillow decodes, torchvision's ``Resize(resize)``, ``CenterCrop(resize)``, ``TenCrop(crop)`` (or
  ``CenterCrop(crop)``), ``ToTensor`` and ``Normalize`` (the model's mean and std) make the patches; one forward pass
  for the whole batch; the softmax averaged over each image's crops; the top 5;
- **TorchServe's own batching**: ``batchSize`` = the service's batch cap in images (``ALEXNET_MAX_BATCH_PATCHES`` ÷
  patches per image), ``maxBatchDelay`` = the service's ``ALEXNET_MAX_BATCH_DELAY_MS``, but at least 1 ms: at 0
  TorchServe's batch aggregator stops after the second request it finds queued; one worker
  (``minWorkers = maxWorkers = 1``), and ``torch.set_num_threads`` = the service's ONNX Runtime intra-op threads
  (all cores). The crop scheme, sizes, normalisation and thread count come from ``peer.json`` in the archive.
"""

from __future__ import annotations

import io
import json
import os

import torch
from PIL import Image
from torchvision import transforms as T
from ts.torch_handler.base_handler import BaseHandler

TOP_K = 5
INTERPOLATION = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


class AlexNetTenCropHandler(BaseHandler):
    def initialize(self, context) -> None:
        with open(os.path.join(context.system_properties["model_dir"], "peer.json")) as fh:
            cfg = json.load(fh)
        torch.set_num_threads(cfg["threads"])
        super().initialize(context)  # loads the TorchScript (the archive's serialized file)
        resize, crop = cfg["resize_size"], cfg["crop_size"]
        to_tensor = T.Compose([T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])])
        front = [T.Resize(resize, interpolation=INTERPOLATION[cfg["interpolation"]]), T.CenterCrop(resize)]
        if cfg["crops"] == "ten":
            self.transform = T.Compose([*front, T.TenCrop(crop),
                                        T.Lambda(lambda crops: torch.stack([to_tensor(c) for c in crops]))])
            self.per_image = 10
        else:
            self.transform = T.Compose([*front, T.CenterCrop(crop), T.Lambda(lambda c: to_tensor(c)[None])])
            self.per_image = 1

    def preprocess(self, data: list[dict]) -> torch.Tensor:
        images = []
        for row in data:
            body = row.get("data") or row.get("body")
            images.append(self.transform(Image.open(io.BytesIO(body)).convert("RGB")))
        return torch.cat(images)

    def inference(self, data: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(data)

    def postprocess(self, data: torch.Tensor) -> list[dict]:
        probs = torch.softmax(data, dim=1).view(-1, self.per_image, data.shape[1]).mean(dim=1)
        values, indices = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
        return [{"predictions": [{"index": int(i), "probability": float(v)} for v, i in zip(vs, ix, strict=True)]}
                for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)]
