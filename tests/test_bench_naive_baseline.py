"""The naive baseline (bench/naive_baseline.py) is a working server: real model, real JPEG, one request."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from bench.naive_baseline import build_transforms, create_app
from training.alexnet import build_alexnet
from training.presets import IMAGENET_MEAN, IMAGENET_STD, ten_crop_transform


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_alexnet(10, init="kaiming").eval()


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    from sklearn.datasets import load_sample_images

    buf = io.BytesIO()
    Image.fromarray(load_sample_images().images[0]).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_baseline_answers_one_request_like_the_paper_procedure(model, jpeg: bytes) -> None:
    with TestClient(create_app(model=model)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        r = client.post("/predict?top_k=3", files={"file": ("photo.jpg", jpeg, "image/jpeg")})
        assert r.status_code == 200, r.text
        preds = r.json()["results"][0]["predictions"]
        bad = client.post("/predict", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
        assert bad.status_code == 415
    assert len(preds) == 3 and preds[0]["probability"] >= preds[1]["probability"] >= preds[2]["probability"]
    # Independently: the project's ten-crop pipeline and the same network give the same top-3.
    batch = ten_crop_transform(IMAGENET_MEAN, IMAGENET_STD)(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    with torch.inference_mode():
        probs = torch.softmax(model(batch), dim=1).mean(0).numpy()
    assert [p["index"] for p in preds] == list(np.argsort(-probs)[:3])
    assert preds[0]["probability"] == pytest.approx(float(probs.max()), rel=1e-4)


def test_baseline_transforms_are_torchvisions_ten_crop() -> None:
    t = build_transforms(IMAGENET_MEAN, IMAGENET_STD)
    img = Image.new("RGB", (300, 400), (120, 30, 200))
    assert tuple(t["ten"](img).shape) == (10, 3, 224, 224)
    assert tuple(t["center"](img).shape) == (1, 3, 224, 224)
