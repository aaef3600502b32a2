"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), read straight from its four IDX files: the data set the d2l
book's chapter on modern convolutional networks trains every network on.

    alexnet-train --data fashion-mnist:/usr/share/datasets/fashion-mnist --arch d2l-alexnet --recipe d2l
    python -m training.fashion_mnist /usr/share/datasets/fashion-mnist OUT --split test   # PNGs for alexnet-eval

The files (gzipped or not: ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) install offline with Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``); any folder holding them works. The
standard split: 60,000 training and 10,000 test images, 28×28 grey levels, 10 balanced classes. The whole set
is 55 MB of uint8 in memory, so training keeps it there (on the GPU when there is one) and resizes and
augments batches on the device (training/device_data.py) instead of decoding files.

Class ids are folder-safe spellings of the data set's class names (``tshirt_top`` for "T-shirt/top"): the
labels in the model store carry both, and the PNG folders written for ``alexnet-eval`` are named by id.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.data import DatasetError, stratified_subset

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
SCHEME = "fashion-mnist"  # --data fashion-mnist:DIR
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The data set's class names in label order (github.com/zalandoresearch/fashion-mnist), and folder-safe ids.
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
CLASS_IDS = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049  # big-endian int32 at offset 0: 0x00000803 and 0x00000801


class IdxError(DatasetError):
    """The folder does not hold readable Fashion-MNIST IDX files; the message says which file and why."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # int64 [N], 0..9


@dataclass(frozen=True)
class FashionMNIST:
    root: Path
    train: Split
    test: Split
    classes: tuple[str, ...] = CLASS_IDS
    names: tuple[str, ...] = CLASS_NAMES


def parse_spec(text: str) -> Path | None:
    """``fashion-mnist:DIR`` → DIR (``fashion-mnist`` alone: the Debian package's folder); other text → None."""
    if text == SCHEME:
        return DEFAULT_ROOT
    if text.startswith(SCHEME + ":"):
        rest = text[len(SCHEME) + 1:]
        return Path(rest) if rest else DEFAULT_ROOT
    return None


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise IdxError(f"{root} has no {stem} or {stem}.gz (install Debian's dataset-fashion-mnist package, or point "
                   f"--data fashion-mnist:DIR at a folder holding the four IDX files)")


def _read(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IdxError(f"cannot read {path}: {exc}") from exc


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file (big-endian int32 magic, int32 sizes, then uint8 data) as a uint8 array of its shape."""
    data = _read(path)
    if len(data) < 8:
        raise IdxError(f"{path}: {len(data)} bytes is too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise IdxError(f"{path}: magic number {found:#010x}, expected {magic:#010x} (not an IDX "
                       f"{'image' if magic == _IMAGES_MAGIC else 'label'} file of unsigned bytes)")
    ndim = found & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise IdxError(f"{path}: the header says {'×'.join(map(str, shape))} = {expected:,} bytes of data, the file "
                       f"has {len(data) - header:,} (truncated or corrupt)")
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=header).reshape(shape)  # writable: torch shares it


def read_split(root: Path, split: str) -> Split:
    images_stem, labels_stem = FILES[split]
    images = read_idx(_find(root, images_stem), _IMAGES_MAGIC)
    labels = read_idx(_find(root, labels_stem), _LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IdxError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.size and int(labels.max()) >= len(CLASS_IDS):
        raise IdxError(f"{root}: {split} labels go up to {int(labels.max())}; Fashion-MNIST has 10 classes")
    return Split(images, labels.astype(np.int64))


def load(root: str | os.PathLike[str] = DEFAULT_ROOT) -> FashionMNIST:
    root = Path(root)
    if not root.is_dir():
        raise IdxError(f"Fashion-MNIST folder {root} does not exist (apt-get install dataset-fashion-mnist puts the "
                       f"files in {DEFAULT_ROOT})")
    return FashionMNIST(root, read_split(root, "train"), read_split(root, "test"))


def write_folder(split: Split, out: Path, indices: Sequence[int] | None = None, progress: bool = True) -> int:
    """PNG files in the ImageNet layout, ``out/<class id>/<index>.png`` (28×28 grey, as stored); returns the count.

    Written into a hidden sibling folder and renamed into place, so an interrupted run leaves no partial folder;
    an existing `out` is refused (the caller chooses another or removes it).
    """
    from PIL import Image

    out = Path(out)
    if out.exists():
        raise IdxError(f"{out} already exists; remove it or choose another folder")
    indices = np.arange(len(split.labels)) if indices is None else np.asarray(indices)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    for class_id in CLASS_IDS:
        (staging / class_id).mkdir(parents=True, exist_ok=True)
    for i in tqdm(indices, desc=f"writing {out.name}", unit="img", disable=not progress, leave=False):
        Image.fromarray(split.images[i], mode="L").save(staging / CLASS_IDS[split.labels[i]] / f"{int(i):05d}.png")
    os.rename(staging, out)
    return len(indices)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.fashion_mnist",
        description="Write a Fashion-MNIST split as PNG files in the ImageNet layout (OUT/<class id>/<n>.png), for "
                    "alexnet-eval, alexnet-serve clients or any image-folder tool.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("root", type=Path, nargs="?", default=DEFAULT_ROOT, help="folder with the four IDX files")
    p.add_argument("out", type=Path, help="folder to create")
    p.add_argument("--split", choices=tuple(FILES), default="test", help="which split")
    p.add_argument("--subset", type=int, default=None, help="a class-balanced N images of the split")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        data = load(args.root)
        split = data.train if args.split == "train" else data.test
        count = write_folder(split, args.out, stratified_subset(split.labels.tolist(), args.subset, args.seed))
    except (IdxError, DatasetError) as exc:
        print(f"fashion_mnist: error: {exc}", file=sys.stderr)
        return 2
    print(f"{count} images of {len(CLASS_IDS)} classes → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
