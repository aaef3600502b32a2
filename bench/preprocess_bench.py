"""Preprocessing micro-benchmark: a 12-megapixel JPEG to the ten crops, JPEG draft decoding against a full decode.

Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling) as long as the result keeps the shorter
side at or above the resize size, so a 4000×3000 photo is decoded at 500×375 instead of 12 M pixels. The two
paths then resize to the same 256×256 square; they differ only by what the bilinear resize from different
source sizes allows, which is measured here (largest and mean absolute pixel difference).
"""

from __future__ import annotations

import io
import statistics
from dataclasses import dataclass

import numpy as np
from PIL import Image

from alexnet_store.vocabulary import CROP_SIZE, RESIZE_SIZE
from bench.report import interleave


def service_limits(*, draft: bool):
    """The service's decode limits (its Settings' defaults), with JPEG draft decoding on or off."""
    import dataclasses

    from service.settings import Settings

    return dataclasses.replace(Settings.model_construct().pipeline_config().limits, draft=draft)

RESIZE, CROP = RESIZE_SIZE, CROP_SIZE


def make_photo_jpeg(width: int = 4000, height: int = 3000, quality: int = 90, seed: int = 0) -> bytes:
    """A 12 MP JPEG with photographic content: a real photograph upscaled, plus fine sensor-like noise."""
    from sklearn.datasets import load_sample_images

    base = Image.fromarray(load_sample_images().images[0]).resize((width, height), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0, 4, (height, width, 1))
    pixels = np.clip(np.asarray(base, np.float32) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class DraftResult:
    megapixels: float
    full_ms_median: float
    draft_ms_median: float
    full_ms_best: float
    draft_ms_best: float
    speedup_median: float
    decoded_size_draft: tuple[int, int]
    max_abs_diff: int
    mean_abs_diff: float


def squares(data: bytes) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The 256×256 square from a draft decode and from a full decode, and the draft decode's size."""
    from service.preprocess import decode_image, resize_square

    draft = decode_image(data, RESIZE, service_limits(draft=True))
    full = decode_image(data, RESIZE, service_limits(draft=False))
    return resize_square(draft, RESIZE), resize_square(full, RESIZE), draft.size


def measure_draft(data: bytes | None = None, rounds: int = 7) -> DraftResult:
    from service.preprocess import image_to_crops

    data = data or make_photo_jpeg()
    with Image.open(io.BytesIO(data)) as img:
        megapixels = img.size[0] * img.size[1] / 1e6
    limits = {"full": service_limits(draft=False), "draft": service_limits(draft=True)}
    samples = interleave({k: (lambda lim=lim: image_to_crops(data, "ten", RESIZE, CROP, lim, "bilinear"))
                          for k, lim in limits.items()}, rounds=rounds)
    a, b, size = squares(data)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    full, draft = samples["full"], samples["draft"]
    return DraftResult(
        megapixels=megapixels, full_ms_median=1000 * full.median, draft_ms_median=1000 * draft.median,
        full_ms_best=1000 * full.best, draft_ms_best=1000 * draft.best,
        speedup_median=statistics.median(f / d for f, d in zip(full.wall, draft.wall, strict=True)),
        decoded_size_draft=size, max_abs_diff=int(diff.max()), mean_abs_diff=float(diff.mean()))


def main() -> None:
    r = measure_draft()
    print(f"{r.megapixels:.1f} MP JPEG → ten crops: full decode {r.full_ms_median:.0f} ms (best {r.full_ms_best:.0f}), "
          f"draft {r.draft_ms_median:.0f} ms (best {r.draft_ms_best:.0f}, decoded at {r.decoded_size_draft[0]}×"
          f"{r.decoded_size_draft[1]}): {r.speedup_median:.1f}× faster; 256² patch differs by at most "
          f"{r.max_abs_diff} (mean {r.mean_abs_diff:.2f}) grey levels")


if __name__ == "__main__":
    main()
