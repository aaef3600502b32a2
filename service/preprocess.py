"""Uploaded bytes → the paper's test-time patches, as uint8 arrays.

The one implementation of preprocessing: the service's pipeline (service/pipeline.py), which every transport
and `alexnet-eval` go through, calls `prepare_image`.
It reproduces torchvision's ``Resize(256)`` (Pillow's bilinear or bicubic filter, antialiased, as the model's
metadata says), ``CenterCrop(256)`` and
``TenCrop(224)`` pixel for pixel, without PyTorch. Normalisation (mean/std) happens in the serving
graph, so what travels to the model is uint8, a quarter of the bytes of float32.

Errors carry the HTTP status a route should answer with, so every caller reports bad input the same way.

What real uploads need, and how it is handled here:
- formats: JPEG (and MPO, the multi-picture JPEG of cameras), PNG, WebP, BMP, GIF, TIFF; for animated or
  multi-page files the first frame (Image.open leaves the file there; counting frames is never needed);
- EXIF orientation applied (a file whose EXIF block is broken is used as stored);
- grayscale, bilevel, palette, CMYK, YCbCr → RGB; RGBA/LA/PA and palette transparency composited on white;
  16-bit and 32-bit grayscale scaled to 8 bits, not clipped;
- images smaller than the resize size are upscaled (the same bilinear resize as for larger ones);
- large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg (Pillow's draft mode) as long as the shorter
  side stays at least the resize size, so a 12-megapixel photo is never decoded in full;
- decompression bombs: the pixel count in the header is checked before any pixel is decoded;
- extreme aspect ratios (a 1×20000 strip) resize only the central region, so memory stays bounded.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from alexnet_store.vocabulary import FIVE_CROP, PATCHES_PER_SCHEME, CropScheme

# The crop schemes and torchvision's FiveCrop order come from the store's vocabulary; `patch_boxes` names and
# places every patch (the one definition of the patch geometry: crop_patches and the API use it).

# Formats real uploads come in. Image.open is restricted to these: no EPS/PostScript (Ghostscript),
# no exotic decoders reachable from the network.
# MPO (the multi-picture JPEG of cameras) is opened by the JPEG plugin in recent Pillow, by its own in older
# ones: only formats this Pillow registers are passed to Image.open (an unknown one is a KeyError there).
Image.init()
ALLOWED_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF") if f in Image.OPEN)
ACCEPTED_FORMATS = "JPEG, PNG, WebP, BMP, GIF, TIFF"  # as told to clients
# How files of the accepted formats begin (WebP: RIFF....WEBP, checked apart): a file that begins so but cannot be
# opened is corrupt (400), anything else is not a supported image (415).
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, as a browser page shows them
# The pixel limit is DecodeLimits.max_pixels, checked on the header below; Pillow's own warning (at 89 M
# pixels) would only duplicate it. Pillow still raises DecompressionBombError at 2× its limit: that is a 413 too.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Above this many times the square's area, only the central region is resized (see resize_square).
# Keys of Image.info through which decode_image tells resize_square about a drafted (reduced-scale) decode.
SOURCE_SIZE_KEY = "alexnet.source_size"
DRAFT_EXTENT_KEY = "alexnet.draft_extent"
_MAX_RESIZE_AREA_FACTOR = 16


class ImageError(ValueError):
    """An upload that cannot be turned into patches; `status` is the HTTP status to answer with."""

    status: int = 400
    reason: str = "corrupt"  # a short machine-readable kind: empty, unsupported, too_many_pixels, corrupt, ...

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """What a decode may cost; the values come from `Settings` (ALEXNET_MAX_PIXELS, ALEXNET_JPEG_DRAFT)."""

    max_pixels: int  # a 12 MP photo is 12 M; anything far larger is a decompression bomb
    draft: bool  # let the JPEG decoder downscale by 1/2, 1/4, 1/8 when the result stays >= min side
    draft_min_side: int | None = None  # default: the model's resize size



def decode_image(data: bytes, resize_size: int, limits: DecodeLimits) -> Image.Image:
    """Bytes → RGB Pillow image, oriented by EXIF, decoded no larger than the resize needs (JPEG draft)."""
    return _decode(data, resize_size, limits)[0]


def _decode(data: bytes, resize_size: int, limits: DecodeLimits) -> tuple[Image.Image, str, tuple[int, int]]:
    """decode_image, also returning the file's format and its stored size (before draft and EXIF rotation)."""
    if not data:
        raise ImageError("the file is empty", status=422, reason="empty")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        if data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            # it says it is one of the accepted formats, but its header cannot be read: a broken file (400),
            # not a file of the wrong kind (415)
            raise ImageError("corrupt or truncated image header") from exc
        raise ImageError(
            f"not a supported image (accepted: {ACCEPTED_FORMATS})",
            status=415, reason="unsupported",
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image has too many pixels: {exc}", status=413, reason="too_many_pixels") from exc
    except Exception as exc:  # a malformed header can raise almost anything inside a Pillow plugin
        raise ImageError(f"corrupt image header: {exc}") from exc

    fmt = img.format or "unknown"
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}×{height})")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"image is {width}×{height} = {width * height:,} pixels, more than the limit of "
            f"{limits.max_pixels:,} (decompression-bomb guard)",
            status=413, reason="too_many_pixels",
        )
    box = None  # with draft: where the whole stored image lies in decoded pixels, (0, 0, W/s, H/s)
    try:
        if limits.draft and fmt in ("JPEG", "MPO"):
            short = min(width, height)
            min_side = limits.draft_min_side or resize_size
            if short > min_side:
                scale = min_side / short
                drafted = img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
                if drafted is not None and img.size != (width, height):
                    box = tuple(float(v) for v in drafted[1])
        img.load()
    except Exception as exc:  # truncated data, bad Huffman tables, broken zlib streams...
        raise ImageError(f"corrupt or truncated image: {exc}") from exc
    try:
        decoded_size = img.size
        img, orientation = _orient(img)
        img = _to_rgb(img)
    except Exception as exc:  # a mode Pillow cannot convert (exotic TIFF) or data that fails late
        raise ImageError(f"cannot convert the image to RGB: {exc}") from exc
    if box is not None:
        # Reduced-scale decoding rounds the size up to whole pixels (1601 rows / 4 → 401 decoded rows
        # spanning 400.25); resize_square maps from that exact region (moved by the EXIF rotation), so
        # the geometry is the full decode's and only the decoder's downscaling filter differs.
        swapped = orientation in (5, 6, 7, 8)
        img.info[SOURCE_SIZE_KEY] = (height, width) if swapped else (width, height)
        img.info[DRAFT_EXTENT_KEY] = _oriented_box(box, decoded_size, orientation)
    return img, fmt, (width, height)


def _orient(img: Image.Image) -> tuple[Image.Image, int]:
    """Apply the EXIF orientation (returning the one applied); a broken EXIF block is ignored."""
    try:
        orientation = int(img.getexif().get(0x0112, 1))
        return ImageOps.exif_transpose(img), orientation if 1 <= orientation <= 8 else 1
    except Exception:
        return img, 1


def _oriented_box(box: tuple[float, ...], size: tuple[int, int], orientation: int) -> tuple[float, ...]:
    """Where the rectangle `box` of an image of `size` lies after exif_transpose for `orientation`."""
    w, h = size
    mapping = {
        1: lambda x, y: (x, y), 2: lambda x, y: (w - x, y), 3: lambda x, y: (w - x, h - y),
        4: lambda x, y: (x, h - y), 5: lambda x, y: (y, x), 6: lambda x, y: (h - y, x),
        7: lambda x, y: (h - y, w - x), 8: lambda x, y: (y, w - x),
    }[orientation]
    (ax, ay), (bx, by) = mapping(box[0], box[1]), mapping(box[2], box[3])
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


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


RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}  # metadata's names


def resize_square(img: Image.Image, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Shorter side to `size`, then the central size×size patch: torchvision's Resize + CenterCrop (on a PIL
    image torchvision calls the same Pillow filter, antialiased; `interpolation` is the model's).

    For an image that decode_image drafted, sizes are computed from the stored image's full size and the
    resize maps from the exact extent the decoded pixels cover, so only the decoder's filter differs.
    """
    width, height = img.info.get(SOURCE_SIZE_KEY) or img.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    top, left = _center_offset(new_h, size), _center_offset(new_w, size)
    extent = img.info.get(DRAFT_EXTENT_KEY)
    if extent is not None or new_w * new_h > _MAX_RESIZE_AREA_FACTOR * size * size:
        # Resize only the source region under the central square. For a strip (aspect ratio > 16:1) that
        # avoids a huge intermediate image; Pillow's filter still reads the pixels around the region, so
        # the result differs from the full resize by at most one grey level in a few pixels.
        x0, y0, x1, y1 = extent if extent is not None else (0.0, 0.0, *img.size)
        sx, sy = (x1 - x0) / new_w, (y1 - y0) / new_h
        box = (x0 + left * sx, y0 + top * sy, x0 + (left + size) * sx, y0 + (top + size) * sy)
        return np.asarray(img.resize((size, size), RESAMPLING[interpolation], box=box))
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), RESAMPLING[interpolation])
    return np.asarray(img)[top:top + size, left:left + size]


def _center_offset(length: int, crop: int) -> int:
    return round((length - crop) / 2.0)  # torchvision's rounding (round half to even), kept on purpose


@dataclass(frozen=True)
class PatchBox:
    """One patch: the crop×crop region of the square at (left, top) it shows, mirrored when `flipped`."""

    name: str  # the region it shows ("top-left", ..., "center"), with "-flipped" when mirrored
    left: int
    top: int
    crop: int
    flipped: bool

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in the square, Pillow's convention (right and bottom exclusive)."""
        return (self.left, self.top, self.left + self.crop, self.top + self.crop)


def _mirror_name(name: str) -> str:
    """The region a cut of the mirrored square shows in the square itself: left and right swap."""
    return "-".join({"left": "right", "right": "left"}.get(word, word) for word in name.split("-"))


def patch_boxes(size: int, crop: int, scheme: CropScheme) -> tuple[PatchBox, ...]:
    """The patches of `scheme` in a size×size square, in the order the model sees them (torchvision's TenCrop).

    TenCrop cuts the five FiveCrop patches of the square, then the same five cuts of the mirrored square. A
    cut of the mirrored square at x shows the square's region at ``size - crop - x``, mirrored, so each patch is
    named by the region of the square it shows: TenCrop's sixth patch, the mirrored square's top-left corner,
    is the square's top-right corner mirrored, "top-right-flipped". Every name appears once, and each patch's
    mirror image is the patch of the same region with "-flipped".
    """
    if scheme not in PATCHES_PER_SCHEME:
        raise ValueError(f"unknown crop scheme {scheme!r}")
    c, e = _center_offset(size, crop), size - crop
    if scheme == "center":
        return (PatchBox("center", c, c, crop, False),)

    def cut(name: str) -> tuple[int, int]:  # FiveCrop's cut → its (left, top)
        if name == "center":
            return c, c
        vertical, horizontal = name.split("-")
        return (0 if horizontal == "left" else e), (0 if vertical == "top" else e)

    five = [PatchBox(name, *cut(name), crop, False) for name in FIVE_CROP]
    mirrored = [PatchBox(_mirror_name(p.name) + "-flipped", e - p.left, p.top, crop, True) for p in five]
    return (*five, *mirrored)


def crop_patches(square: np.ndarray, crop: int, scheme: CropScheme) -> np.ndarray:
    """[S, S, 3] uint8 → [10 or 1, crop, crop, 3] uint8: corners, centre and their reflections, or the centre.

    The patches come in `patch_boxes` order (torchvision's TenCrop order). Each patch is copied once, straight
    into the output; the square is mirrored once (a reversed-stride copy is slow, so not once per patch) and
    a flipped patch is cut from the mirrored square where its region lies there.
    """
    size = square.shape[0]
    boxes = patch_boxes(size, crop, scheme)
    out = np.empty((len(boxes), crop, crop, square.shape[2]), np.uint8)
    mirrored = None
    for i, p in enumerate(boxes):
        if p.flipped:
            if mirrored is None:
                mirrored = np.ascontiguousarray(square[:, ::-1])
            x = size - crop - p.left
            out[i] = mirrored[p.top:p.top + crop, x:x + crop]
        else:
            out[i] = square[p.top:p.top + crop, p.left:p.left + crop]
    return out


def image_to_crops(data: bytes, scheme: CropScheme, resize_size: int, crop_size: int,
                   limits: DecodeLimits, interpolation: str) -> np.ndarray:
    """Uploaded bytes → uint8 patches [n, crop, crop, 3] (n = 10 or 1), ready for the serving graph."""
    square = resize_square(decode_image(data, resize_size, limits), resize_size, interpolation)
    return crop_patches(square, crop_size, scheme)


@dataclass(frozen=True)
class PreparedImage:
    """An upload turned into patches, with what was learnt about the file on the way."""

    patches: dict[str, np.ndarray]  # crop scheme → uint8 [n, crop, crop, 3], all cut from one decode
    format: str  # JPEG, PNG, ...
    width: int  # as stored in the file (before EXIF rotation and draft scaling)
    height: int
    square: np.ndarray | None = None  # uint8 [S, S, 3]: the square the patches were cut from (patch_boxes' frame)


def prepare_image(data: bytes, schemes: Sequence[CropScheme], resize_size: int, crop_size: int,
                  limits: DecodeLimits, interpolation: str) -> PreparedImage:
    """Decode and resize once, cut the patches of every scheme asked for, and keep the file's format and size."""
    img, fmt, (width, height) = _decode(data, resize_size, limits)
    square = resize_square(img, resize_size, interpolation)
    return PreparedImage({scheme: crop_patches(square, crop_size, scheme) for scheme in schemes}, fmt, width, height,
                         square)
