"""Validation folders → a list of (image path, class index) samples, checked before any work starts.

Two layouts are understood:

- **ImageNet layout**: ``VAL_DIR/<class>/<image>``. A folder name is matched to the model's labels by
  the label ``id`` (the wnid / training folder name), then by its ``name``, then by the name compared
  case-insensitively with ``_`` read as a space (``great_white_shark`` → ``great white shark``).
- **Flat ILSVRC-2012 layout**: ``VAL_DIR/ILSVRC2012_val_00000001.JPEG`` ... plus a ground-truth file
  (``--ground-truth``, or found in VAL_DIR under its usual name):

  - ``LOC_val_solution.csv`` (Kaggle's ILSVRC release): ``ImageId,PredictionString``, the first token of
    the prediction string is the image's wnid.
  - the devkit's ``ILSVRC2012_validation_ground_truth.txt``: one 1-based ``ILSVRC2012_ID`` per line, line
    *i* for ``ILSVRC2012_val_{i:08d}``. Those IDs number the synsets in the devkit's ``meta.mat`` order,
    which is **not** the sorted-wnid order models are trained with (ID 1 is n02119789 "kit fox", index 0
    of a sorted-wnid model is n01440764 "tench"), so this file needs a synset mapping (``--synsets``):
    the devkit's ``meta.mat`` (read with SciPy), or a text file that gives each ID its wnid — one wnid
    per line in ID order, or lines holding an integer ID and, as their first other word, the wnid (such
    as the ``map_clsloc.txt`` of later devkits: ``n02119789 1 kit_fox``).

Classes the model does not know, images without ground truth and empty folders are `EvalDataError`s,
raised before anything is decoded.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alexnet_store import Label
from alexnet_store.vocabulary import IMAGE_SUFFIXES

LOC_SOLUTION = "LOC_val_solution.csv"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)", re.IGNORECASE)


class EvalDataError(ValueError):
    """The validation set cannot be evaluated as given (a usage/setup error: nothing has run yet)."""


@dataclass(frozen=True)
class Sample:
    path: Path
    target: int  # index into the model's labels


@dataclass(frozen=True)
class EvalSet:
    samples: list[Sample]
    layout: str  # "imagenet" or "ilsvrc-flat"
    ground_truth: Path | None = None


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


class LabelIndex:
    """Class name or id → index into the model's labels (exact id, exact name, then a loose name match)."""

    def __init__(self, labels: Sequence[Label]) -> None:
        self.labels = list(labels)
        self._by_id = {lab.id: i for i, lab in enumerate(self.labels)}
        self._by_name: dict[str, int] = {}
        loose: dict[str, set[int]] = defaultdict(set)
        for i, lab in enumerate(self.labels):
            self._by_name.setdefault(lab.name, i)
            loose[_loose(lab.name)].add(i)
            loose[_loose(lab.id)].add(i)
        self._loose = {k: next(iter(v)) for k, v in loose.items() if len(v) == 1}  # ambiguous keys never match

    def lookup(self, key: str) -> int | None:
        for table, k in ((self._by_id, key), (self._by_name, key), (self._loose, _loose(key))):
            if k in table:
                return table[k]
        return None

    def resolve_all(self, keys: Sequence[str], what: str) -> dict[str, int]:
        """Map every key or raise one error that lists all the unknown ones."""
        found = {k: self.lookup(k) for k in keys}
        unknown = sorted(k for k, v in found.items() if v is None)
        if unknown:
            shown = ", ".join(repr(k) for k in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10
                                                                else "")
            known = ", ".join(f"{lab.id} ({lab.name})" if lab.id != lab.name else lab.id for lab in self.labels[:8])
            raise EvalDataError(
                f"{len(unknown)} {what} not among the model's {len(self.labels)} classes: {shown}. "
                f"Classes are matched by label id or name; the model's labels start: {known}"
                + (", ..." if len(self.labels) > 8 else "")
            )
        return {k: v for k, v in found.items() if v is not None}


def _loose(text: str) -> str:
    return " ".join(text.replace("_", " ").casefold().split())


def load_eval_set(val_dir: Path, labels: Sequence[Label], ground_truth: Path | None = None,
                  synsets: Path | None = None, limit: int | None = None) -> EvalSet:
    """Scan `val_dir`, match its classes to `labels`, and return the samples to evaluate."""
    val_dir = Path(val_dir)
    if not val_dir.is_dir():
        raise EvalDataError(f"validation folder {val_dir} does not exist or is not a folder")
    index = LabelIndex(labels)
    class_dirs = sorted(p for p in val_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    flat_images = sorted(p for p in val_dir.iterdir() if is_image_file(p))
    if ground_truth is None and not flat_images and class_dirs:
        if synsets is not None:
            raise EvalDataError("--synsets only applies to the flat ILSVRC layout with the devkit's ground truth")
        samples = _imagenet_layout(val_dir, class_dirs, index)
        eval_set = EvalSet(samples, "imagenet")
    else:
        if not flat_images:
            raise EvalDataError(f"no images in {val_dir} (expected <class>/<image> folders or ILSVRC2012_val_* files)")
        gt_path = ground_truth or _find_ground_truth(val_dir)
        eval_set = EvalSet(_flat_layout(flat_images, gt_path, synsets, index), "ilsvrc-flat", gt_path)
    if limit is not None:
        eval_set = EvalSet(_spread(eval_set.samples, limit), eval_set.layout, eval_set.ground_truth)
    return eval_set


def _imagenet_layout(val_dir: Path, class_dirs: list[Path], index: LabelIndex) -> list[Sample]:
    mapping = index.resolve_all([d.name for d in class_dirs], f"class folders in {val_dir} are")
    duplicates = defaultdict(list)
    for name, i in mapping.items():
        duplicates[i].append(name)
    clashes = [names for names in duplicates.values() if len(names) > 1]
    if clashes:
        raise EvalDataError(f"folders {clashes[0]} in {val_dir} name the same class; merge them")
    samples = []
    for d in class_dirs:
        samples += [Sample(p, mapping[d.name]) for p in sorted(d.rglob("*")) if is_image_file(p)]
    if not samples:
        raise EvalDataError(f"the class folders in {val_dir} hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return samples


def _find_ground_truth(val_dir: Path) -> Path:
    for name in (LOC_SOLUTION, DEVKIT_GROUND_TRUTH):
        if (val_dir / name).is_file():
            return val_dir / name
    raise EvalDataError(
        f"{val_dir} holds images but no class folders, so it is read as the flat ILSVRC-2012 layout, which needs "
        f"a ground-truth file: pass --ground-truth ({LOC_SOLUTION} or {DEVKIT_GROUND_TRUTH} with --synsets)"
    )


def _flat_layout(images: list[Path], gt_path: Path, synsets: Path | None, index: LabelIndex) -> list[Sample]:
    if not gt_path.is_file():
        raise EvalDataError(f"ground-truth file {gt_path} does not exist")
    if gt_path.suffix.lower() == ".csv":
        if synsets is not None:
            raise EvalDataError("--synsets is for the devkit's ground-truth file; LOC_val_solution.csv has wnids")
        truth = _read_loc_solution(gt_path)
        key_of = _stem
    else:
        truth = _read_devkit_ground_truth(gt_path, synsets)
        key_of = _val_number
    missing = [p.name for p in images if key_of(p) not in truth]
    if missing:
        raise EvalDataError(
            f"{len(missing)} images in {images[0].parent} have no entry in {gt_path.name}: "
            f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}"
        )
    classes = sorted({truth[key_of(p)] for p in images})
    mapping = index.resolve_all(classes, f"ground-truth classes in {gt_path.name} are")
    return [Sample(p, mapping[truth[key_of(p)]]) for p in images]


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _val_number(path: Path) -> int | None:
    m = _VAL_NUMBER.search(path.name)
    return int(m.group(1)) if m else None


def _read_loc_solution(path: Path) -> dict[str, str]:
    """LOC_val_solution.csv: ImageId → wnid (the first box's class: every box of an image has the same one)."""
    truth: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise EvalDataError(f"{path} is not a LOC_val_solution.csv (expected columns ImageId,PredictionString)")
        for row in reader:
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise EvalDataError(f"{path}: image {row['ImageId']} has an empty PredictionString")
            truth[row["ImageId"].strip()] = tokens[0]
    return truth


def _read_devkit_ground_truth(path: Path, synsets: Path | None) -> dict[int | None, str]:
    """ILSVRC2012_validation_ground_truth.txt: validation image number → wnid, through the synset mapping."""
    try:
        ids = [int(line) for line in path.read_text().split()]
    except ValueError as exc:
        raise EvalDataError(
            f"{path} is neither a LOC_val_solution.csv nor the devkit's ground truth (one integer per line): {exc}"
        ) from exc
    if synsets is None:
        raise EvalDataError(
            f"{path.name} numbers classes by the devkit's ILSVRC2012_ID (meta.mat order), not by the model's label "
            "order: pass --synsets with the devkit's data/meta.mat, or a text file of wnids in ILSVRC2012_ID order "
            f"(or use {LOC_SOLUTION}, which names the wnids)"
        )
    id_to_wnid = read_synset_mapping(synsets)
    unknown = sorted({i for i in ids if i not in id_to_wnid})
    if unknown:
        raise EvalDataError(f"{path.name} uses ILSVRC2012_IDs that {synsets.name} does not map: {unknown[:10]}")
    return {n: id_to_wnid[i] for n, i in enumerate(ids, start=1)}


def read_synset_mapping(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID → wnid from the devkit's meta.mat or a text file (see the module docstring)."""
    if not path.is_file():
        raise EvalDataError(f"synset mapping {path} does not exist")
    if path.suffix.lower() == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError as exc:
            raise EvalDataError("reading meta.mat needs SciPy (pip install scipy), or give a text mapping") from exc
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    mapping: dict[int, str] = {}
    for line_no, line in enumerate((ln for ln in path.read_text().splitlines() if ln.strip()), start=1):
        tokens = line.replace(",", " ").split()
        numbers = [int(t) for t in tokens if t.isdigit()]
        words = [t for t in tokens if not t.isdigit()]
        if not words:
            raise EvalDataError(f"{path}: line {line_no} ({line.strip()!r}) names no synset")
        number = numbers[0] if numbers else line_no
        if number in mapping:
            raise EvalDataError(f"{path}: ILSVRC2012_ID {number} is mapped twice (line {line_no})")
        mapping[number] = words[0]  # the wnid: 'n02119789', '1 n02119789' and 'n02119789 1 kit_fox' all work
    return mapping


def _spread(samples: list[Sample], limit: int) -> list[Sample]:
    """The first `limit` samples taken round-robin over classes, so a small limit still covers many classes."""
    if limit >= len(samples):
        return samples
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.target].append(s)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[Sample] = []
    depth = 0
    while len(chosen) < limit:
        chosen += [q[depth] for q in queues if depth < len(q)][: limit - len(chosen)]
        depth += 1
    return sorted(chosen, key=lambda s: (s.target, str(s.path)))
