"""Where things are: the checkout, ../shared/data beside it, the photos scikit-learn ships."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
SKLEARN_IMAGES = Path(__import__("sklearn").__file__).parent / "datasets" / "images"
