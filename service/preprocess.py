"""Uploaded bytes → the paper's test-time patches, as uint8 arrays.

The one implementation of preprocessing: the service and `alexnet-eval` both call `image_to_crops`.
It reproduces torchvision's ``Resize(256)`` (Pillow bilinear, antialiased), ``CenterCrop(256)`` and
``TenCrop(224)`` pixel for pixel, without PyTorch. Normalisation (mean/std) happens in the serving
graph, so what travels to the model is uint8, a quarter of the bytes of float32.

Errors carry the HTTP status a route should answer with, so every caller reports bad input the same way.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CropScheme = Literal["ten", "center"]
CROPS_PER_SCHEME: dict[str, int] = {"ten": 10, "center": 1}

# Formats real uploads come in. Image.open is restricted to these: no EPS/PostScript (Ghostscript),
# no exotic decoders reachable from the network.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, as a browser page shows them


class ImageError(ValueError):
    """An upload that cannot be turned into patches; `status` is the HTTP status to answer with."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 50_000_000  # a 12 MP photo is 12 M; anything far larger is a decompression bomb
    draft: bool = True  # let the JPEG decoder downscale by 1/2, 1/4, 1/8 when the result stays >= min side
    draft_min_side: int | None = None  # default: the model's resize size


DEFAULT_LIMITS = DecodeLimits()


def decode_image(data: bytes, resize_size: int, limits: DecodeLimits = DEFAULT_LIMITS) -> Image.Image:
    """Bytes → RGB Pillow image, oriented by EXIF, decoded no larger than the resize needs (JPEG draft)."""
    if not data:
        raise ImageError("the file is empty", status=422)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"not a supported image (accepted: {', '.join(f for f in ALLOWED_FORMATS if f != 'MPO')})",
            status=415,
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image has too many pixels: {exc}", status=413) from exc
    except Exception as exc:  # a malformed header can raise almost anything inside a Pillow plugin
        raise ImageError(f"corrupt image header: {exc}") from exc

    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}×{height})")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"image is {width}×{height} = {width * height:,} pixels, more than the limit of "
            f"{limits.max_pixels:,} (decompression-bomb guard)",
            status=413,
        )
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WebP/TIFF: the first frame
        if limits.draft and img.format in ("JPEG", "MPO"):
            short = min(width, height)
            min_side = limits.draft_min_side or resize_size
            if short > min_side:
                scale = min_side / short
                img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:  # truncated data, bad Huffman tables, broken EXIF...
        raise ImageError(f"corrupt or truncated image: {exc}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grayscale: scale, do not clip
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr * 255.0 if arr.size and np.nanmax(arr) <= 1.0 else arr
        return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to `size`, then the central size×size patch: torchvision's Resize + CenterCrop."""
    width, height = img.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = _center_offset(new_h, size), _center_offset(new_w, size)
    return np.asarray(img)[top:top + size, left:left + size]


def _center_offset(length: int, crop: int) -> int:
    return round((length - crop) / 2.0)  # torchvision's rounding (round half to even), kept on purpose


def crop_patches(square: np.ndarray, crop: int, scheme: CropScheme) -> np.ndarray:
    """[S, S, 3] uint8 → [10 or 1, crop, crop, 3] uint8: corners, centre and their reflections, or the centre."""
    size = square.shape[0]
    c = _center_offset(size, crop)
    center = square[c:c + crop, c:c + crop]
    if scheme == "center":
        return center[None].copy()
    if scheme != "ten":
        raise ValueError(f"unknown crop scheme {scheme!r}")
    e = size - crop
    five = np.stack([square[:crop, :crop], square[:crop, e:], square[e:, :crop], square[e:, e:], center])
    return np.concatenate([five, five[:, :, ::-1]])


def image_to_crops(data: bytes, scheme: CropScheme, resize_size: int, crop_size: int,
                   limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Uploaded bytes → uint8 patches [n, crop, crop, 3] (n = 10 or 1), ready for the serving graph."""
    return crop_patches(resize_square(decode_image(data, resize_size, limits), resize_size), crop_size, scheme)
