"""Test images (synthetic, any format) and the multipart `files` field the service reads."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def image(fmt: str, width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).resize((width, height), Image.Resampling.BICUBIC).save(buf, fmt)
    return buf.getvalue()


def files(*items: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]
