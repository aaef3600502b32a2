"""JPEG draft decoding of a 12-megapixel photo gives the same 256×256 patch within what bilinear resizing allows.

(Its speed is measured by `python -m bench.preprocess_bench` / bench.references, never asserted in a test.)
"""

from __future__ import annotations

import numpy as np

from bench.preprocess_bench import make_photo_jpeg, squares


def test_draft_decode_of_12mp_jpeg_gives_the_same_patch_within_the_resize_tolerance() -> None:
    data = make_photo_jpeg(4000, 3000)
    draft, full, decoded = squares(data)
    assert draft.shape == full.shape == (256, 256, 3)
    assert decoded[0] * decoded[1] < 4000 * 3000 / 16  # libjpeg decoded at 1/8 (or 1/4) scale
    diff = np.abs(draft.astype(np.int16) - full.astype(np.int16))
    assert diff.max() <= 24, diff.max()  # a few grey levels on edges and noise, never a shifted image
    assert diff.mean() <= 2.0, diff.mean()
