"""THE NAIVE BASELINE — not part of the service.

What a user would write by hand to serve the paper's network: FastAPI, the PyTorch model called eagerly,
torchvision's ``Resize(256)`` + ``TenCrop(224)`` transforms, one request at a time (the route is ``async`` and
runs the model inline, so requests queue on the event loop), no batching across requests, no ONNX Runtime.
The benchmark drives it exactly like the service, so the service's speed can be compared with it:

    uvicorn bench.naive_baseline:app --host 127.0.0.1 --port 8001       # or: python -m bench.naive_baseline
    curl -F file=@photo.jpg 'http://127.0.0.1:8001/predict?crops=ten&top_k=5'

The same network as the model store's: a checkpoint (``ALEXNET_BASELINE_CHECKPOINT``), or the paper network
initialised at random with ``ALEXNET_BASELINE_CLASSES`` classes (default 1000), seed ``ALEXNET_BASELINE_SEED``
(default 0), like ``alexnet-export --random-init``. ``ALEXNET_BASELINE_THREADS`` sets torch's threads.
"""

from __future__ import annotations

import io
import os
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import torch
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from alexnet_store.vocabulary import IMAGENET_MEAN, IMAGENET_STD, placeholder_label_names
from training.alexnet import AlexNet, build_alexnet


def load_model(checkpoint: str | None = None, num_classes: int = 1000, seed: int = 0,
               init: str = "paper") -> tuple[AlexNet, list[str], tuple, tuple]:
    """The network, its class names and its normalisation, as a user would load them."""
    if checkpoint:
        from training.checkpoint import labels_from_checkpoint, load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(checkpoint)
        pre = ckpt["preprocessing"]
        return (model_from_checkpoint(ckpt).eval(), [lab.name for lab in labels_from_checkpoint(ckpt)],
                tuple(pre["mean"]), tuple(pre["std"]))
    torch.manual_seed(seed)
    model = build_alexnet(num_classes, init=init).eval()
    return model, placeholder_label_names(num_classes), IMAGENET_MEAN, IMAGENET_STD


def build_transforms(mean: tuple, std: tuple) -> dict[str, T.Compose]:
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    return {
        "ten": T.Compose([T.Resize(256), T.CenterCrop(256), T.TenCrop(224),
                          T.Lambda(lambda crops: torch.stack([to_tensor(c) for c in crops]))]),
        "center": T.Compose([T.Resize(256), T.CenterCrop(224), T.Lambda(lambda c: to_tensor(c)[None])]),
    }


def classify(model: AlexNet, transform: T.Compose, labels: list[str], data: bytes, top_k: int) -> list[dict]:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    batch = transform(image)
    with torch.inference_mode():
        probs = torch.softmax(model(batch), dim=1).mean(dim=0)
    values, indices = probs.topk(min(top_k, len(labels)))
    return [{"index": int(i), "label": labels[int(i)], "probability": float(v)}
            for v, i in zip(values, indices, strict=True)]


def create_app(model: AlexNet | None = None, labels: list[str] | None = None, mean: tuple = IMAGENET_MEAN,
               std: tuple = IMAGENET_STD) -> FastAPI:
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if os.environ.get("ALEXNET_BASELINE_THREADS"):
            torch.set_num_threads(int(os.environ["ALEXNET_BASELINE_THREADS"]))
        if model is None:
            m, names, mu, sd = load_model(os.environ.get("ALEXNET_BASELINE_CHECKPOINT"),
                                          int(os.environ.get("ALEXNET_BASELINE_CLASSES", "1000")),
                                          int(os.environ.get("ALEXNET_BASELINE_SEED", "0")))
        else:
            m, names, mu, sd = model.eval(), labels or placeholder_label_names(model.num_classes), mean, std
        state.update(model=m, labels=names, transforms=build_transforms(mu, sd))
        yield
        state.clear()

    app = FastAPI(title="naive baseline: FastAPI + eager PyTorch + TenCrop (not the service)", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok" if state else "loading"}

    @app.post("/predict")
    async def predict(file: Annotated[UploadFile, File()], top_k: Annotated[int, Query(ge=1)] = 5,
                      crops: Literal["ten", "center"] = "ten") -> dict:
        data = await file.read()
        try:
            predictions = classify(state["model"], state["transforms"][crops], state["labels"], data, top_k)
        except (UnidentifiedImageError, OSError) as exc:
            raise HTTPException(status_code=415, detail=f"not an image: {exc}") from exc
        return {"crops": crops, "results": [{"filename": file.filename, "predictions": predictions}]}

    return app


app = create_app()


def main() -> None:
    import argparse

    import uvicorn

    p = argparse.ArgumentParser(prog="python -m bench.naive_baseline",
                                description="Serve the naive baseline (FastAPI + eager PyTorch + TenCrop).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args()
    uvicorn.run("bench.naive_baseline:app", host=args.host, port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
