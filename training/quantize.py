"""Static INT8 quantisation of an exported AlexNet: ONNX Runtime QDQ, per-channel weights, uint8 activations.

    alexnet-export --checkpoint ckpt.pt --name digits --quantize int8 [--calibration-dir DIR]   (training/export_cli.py)
    python -m training.quantize --model-store model_store --name digits [--version 1] [--calibration-dir DIR]

Both publish a *new* version whose metadata says ``precision: "int8"``; its ``source.quantization`` records
how it was made (the fp32 version or checkpoint it came from, the calibration images, the settings) and how
far it is from the fp32 network on held-out images (top-1 agreement, largest probability difference, which
images). The service serves it unchanged: it takes the same float input, so the serving graph (uint8 patches →
normalise → network → softmax) wraps it as it wraps the fp32 one.

The gate: an int8 model whose ten-crop top-1 agrees with the fp32 network's on fewer than ``--min-agreement``
(default 0.99) of the held-out images is not published — nothing reaches the store, the command says why in one
line and exits 2, as the fp32 export does when its parity check fails. ``--force`` publishes it anyway and the
metadata says so (``gate.forced``). Held-out images are never calibration images: ``--check-dir``, else the
``val/`` split of the data set the calibration images come from (the checkpoint's ``--data``, so the demo
model's digits/val and ImageNet's val), else the two photographs scikit-learn ships.

What is quantised, and why (docs/performance.md has the measurements):
- every convolution (per-channel int8 weights), the fully connected layers, the ReLUs and max-pools, with
  uint8 activations: int8 activations left conv1/conv2 in fp32 between Q/DQ pairs and ran the max-pools
  unfused, which made the model slower than fp32;
- the LRN's a² and its window sum (a 1×1 convolution) too, but its tail (√, √, ×, ÷: the power −¾) stays
  fp32 between a DequantizeLinear and a QuantizeLinear: ONNX has no quantised square root or division, and
  quantising each of those steps only adds Q/DQ passes.
Calibration (min/max of every activation) runs the fp32 model on the paper's ten crops of each calibration
image, preprocessed exactly as at serving time, so the ranges are those the service will see.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image
from torch import nn
from tqdm import tqdm

from alexnet_store import (
    Label,
    ModelMetadata,
    ModelStore,
    ModelVersion,
    OnnxInfo,
    Preprocessing,
    StoreError,
    TrainingSummary,
)
from alexnet_store.store import sha256_of
from alexnet_store.vocabulary import IMAGE_SUFFIXES
from training.export import (
    DEFAULT_OPSET,
    PARITY_TOLERANCE,
    check_labels,
    export_checked_onnx,
    load_images,
    ten_crop_inputs,
)

DEFAULT_CALIBRATION_IMAGES = 64
# The gate (issue 13): the int8 model's ten-crop top-1 must agree with the fp32 network's on this fraction of the
# held-out images, or it is not published.
DEFAULT_MIN_AGREEMENT = 0.99
# Held-out images the gate compares on: at 0.99, 2 disagreements in 200 pass and 3 refuse. Each costs ~0.4 s on a
# 2-core AMD EPYC (Zen 5) shared with other work (load 3): decoding and ten crops 93 ms, fp32 230 ms, int8 87 ms
# (the demo model); its 200 held-out digits took 94 s.
DEFAULT_CHECK_IMAGES = 200
LISTED_DISAGREEMENTS = 20  # the metadata names at most this many images on which int8 and fp32 differ
SAMPLE_PHOTOS = "scikit-learn sample photographs"  # how the metadata names the two photos inside scikit-learn
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Kept in fp32 inside the quantised graph: the LRN's power (see the module docstring).
FP32_OP_TYPES = ("Sqrt", "Div")


class QuantizeError(RuntimeError):
    pass


# -- calibration images -----------------------------------------------------------------------------------
def training_folder(directory: Path) -> Path:
    """A dataset root's ``train/`` split, or `directory` itself when it has none."""
    return directory / "train" if (directory / "train").is_dir() else directory


def val_split(directory: Path) -> Path | None:
    """A data set's held-out split: ``DATA/val`` of a dataset root, or beside its ``DATA/train``; None if none."""
    directory = Path(directory)
    candidates = [directory / "val"] + ([directory.parent / "val"] if directory.name == "train" else [])
    return next((c for c in candidates if c.is_dir()), None)


def find_images(directory: Path, limit: int, seed: int = 0) -> list[Path]:
    """Up to `limit` images from `directory`, spread evenly over its class folders when it has them.

    Works on an ImageNet-layout split (``train/<class>/*``), a dataset root (its ``train/`` is used), or any
    folder of images. The choice is seeded, so the same folder always gives the same calibration set.
    """
    return pick_images(training_folder(Path(directory)), limit, seed)


def pick_images(directory: Path, limit: int, seed: int = 0, exclude: frozenset[Path] = frozenset()) -> list[Path]:
    """Up to `limit` images under `directory` (itself, not its ``train/``), round robin over its class folders,
    seeded; files in `exclude` (resolved paths) are never chosen."""
    directory = Path(directory)
    if not directory.is_dir():
        raise QuantizeError(f"image folder {directory} does not exist")
    groups: dict[Path, list[Path]] = {}
    for path in sorted(directory.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not any(
                part.startswith(".") for part in path.relative_to(directory).parts) and path.resolve() not in exclude:
            groups.setdefault(path.parent, []).append(path)
    if not groups:
        raise QuantizeError(f"no images under {directory} (accepted: {', '.join(sorted(IMAGE_SUFFIXES))})"
                            + (f", other than the {len(exclude)} calibration images" if exclude else ""))
    rng = random.Random(seed)
    for files in groups.values():
        rng.shuffle(files)
    chosen: list[Path] = []
    columns = [groups[k] for k in sorted(groups)]
    for i in range(max(len(c) for c in columns)):  # round robin over the classes
        chosen.extend(c[i] for c in columns if i < len(c))
        if len(chosen) >= limit:
            break
    return chosen[:limit]


def sample_photos() -> list[Path]:
    """The two photographs inside scikit-learn's wheel (china.jpg, flower.jpg): the last resort of both sets."""
    from sklearn.datasets import load_sample_images

    return sorted(Path(f) for f in load_sample_images().filenames)


@dataclass(frozen=True)
class ImageSet:
    """Images chosen from one folder, as the metadata names them: `label` is the folder's last two path parts
    (``digits/val``; never an absolute path), `names()` the files relative to it; `kind` says what they are."""

    folder: Path
    paths: tuple[Path, ...]
    label: str
    kind: str  # "training images", "val split", "check folder" (--check-dir) or "sample photos"

    @classmethod
    def of(cls, folder: Path, paths: Sequence[Path], kind: str) -> ImageSet:
        label = SAMPLE_PHOTOS if kind == "sample photos" else "/".join(Path(folder).resolve().parts[-2:])
        return cls(Path(folder), tuple(paths), label, kind)

    def names(self) -> list[str]:
        return [p.relative_to(self.folder).as_posix() for p in self.paths]


def default_calibration_dir(checkpoint: Mapping[str, Any] | None) -> Path | None:
    """The training set a loaded checkpoint was trained on (its ``--data``/train), if it is still there."""
    recorded = (checkpoint or {}).get("args") or {}
    data = recorded.get("data") if isinstance(recorded, dict) else None
    if data and (Path(data) / "train").is_dir():
        return Path(data) / "train"
    return None


def ten_crop_batches(images: Sequence[Image.Image], pre: Preprocessing) -> list[np.ndarray]:
    """Each image → its ten normalised crops, float32 [10, C, crop, crop] (the parity check's pipeline)."""
    return [crops.numpy().astype(np.float32) for crops in ten_crop_inputs(images, pre)]


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over precomputed batches (one image's crops each)."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name, self.batches, self.position = input_name, list(batches), 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


# -- quantisation -----------------------------------------------------------------------------------------
def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes left in fp32: the LRN's power (Sqrt, Div) and the Mul that joins the two square roots."""
    graph = model.graph
    keep = [n for n in graph.node if n.op_type in FP32_OP_TYPES]
    roots = {o for n in keep if n.op_type == "Sqrt" for o in n.output}
    keep += [n for n in graph.node if n.op_type == "Mul" and len(n.input) == 2 and set(n.input) <= roots]
    return [n.name for n in keep]


def split_grouped_convs(model: onnx.ModelProto, max_groups: int = 4) -> int:
    """Rewrite each grouped Conv (conv2, conv4, conv5: groups=2) as Split → one Conv per group → Concat.

    The same function; but ONNX Runtime's fast int8 convolution on x86 (MLAS's indirect "ConvSym" kernel,
    VNNI where present) only takes group=1, so quantised grouped convs fall back to im2col + GEMM. Returns how
    many convolutions were split. Depthwise-like convs (more than `max_groups` groups) are left alone.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        groups = int(attrs.get("group", 1))
        if node.op_type != "Conv" or not 1 < groups <= max_groups or node.input[1] not in inits or (
                len(node.input) > 2 and node.input[2] and node.input[2] not in inits):
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
        out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
        base = node.name or node.output[0]
        sizes = numpy_helper.from_array(np.full(groups, in_per_group, np.int64), f"{base}_split_sizes")
        graph.initializer.append(sizes)
        parts = [f"{base}_in{g}" for g in range(groups)]
        new_nodes.append(helper.make_node("Split", [node.input[0], sizes.name], parts, name=f"{base}_split", axis=1))
        outs = []
        kept = {k: v for k, v in attrs.items() if k != "group"}
        for g in range(groups):
            w = numpy_helper.from_array(weight[g * out_per_group:(g + 1) * out_per_group], f"{base}_w{g}")
            graph.initializer.append(w)
            inputs = [parts[g], w.name]
            if bias is not None:
                b = numpy_helper.from_array(bias[g * out_per_group:(g + 1) * out_per_group], f"{base}_b{g}")
                graph.initializer.append(b)
                inputs.append(b.name)
            outs.append(f"{base}_out{g}")
            new_nodes.append(helper.make_node("Conv", inputs, [outs[-1]], name=f"{base}_g{g}", **kept))
        new_nodes.append(helper.make_node("Concat", outs, [node.output[0]], name=f"{base}_concat", axis=1))
        count += 1
    if count:
        used = {i for n in new_nodes for i in n.input}
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        del graph.node[:]
        graph.node.extend(new_nodes)
    return count


def name_nodes(model: onnx.ModelProto) -> bool:
    """Give every unnamed node a unique name (quantisation excludes nodes by name); True if any changed."""
    taken = {n.name for n in model.graph.node if n.name}
    changed = False
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            changed = True
    return changed


def quantize_onnx(fp32_path: Path, out_path: Path, calibration: Sequence[np.ndarray], *, input_name: str = "input",
                  reduce_range: bool = False, method: str = "minmax", log: Callable[[str], None] = print) -> dict:
    """fp32 ONNX → QDQ int8 ONNX; returns the settings to record in the metadata."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise QuantizeError(f"unknown calibration method {method!r} ({', '.join(CALIBRATION_METHODS)})")
    if not calibration:
        raise QuantizeError("no calibration images")
    with tempfile.TemporaryDirectory(prefix="alexnet-quant-") as tmp:
        source, prepared = Path(tmp) / "split.onnx", Path(tmp) / "prepared.onnx"
        graph = onnx.load(str(fp32_path))
        split = split_grouped_convs(graph)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(source))
        # Shape inference and ONNX Runtime's basic (layout-independent) graph clean-up, as ONNX Runtime advises.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        if name_nodes(graph):
            onnx.save(graph, str(prepared))
        excluded = fp32_nodes(graph)
        del graph
        start = time.perf_counter()
        quantize_static(
            str(prepared), str(out_path), _Reader(input_name, calibration),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[method],
        )
        log(f"quantised in {time.perf_counter() - start:.0f} s ({len(calibration)} calibration images × "
            f"{calibration[0].shape[0]} crops; {split} grouped convs split per group; {len(excluded)} nodes "
            "kept in fp32)")
    onnx.checker.check_model(str(out_path))
    return {
        "format": "onnxruntime QDQ (static)",
        "weights": "int8, per channel",
        "activations": "uint8 (asymmetric)",
        "reduce_range": reduce_range,
        "calibration_method": method,
        "fp32_nodes": excluded,
        "grouped_convs_split": split,
        "onnxruntime": __import__("onnxruntime").__version__,
    }


def compare(fp32_path: Path, int8_path: Path, images: ImageSet, pre: Preprocessing) -> dict:
    """Ten-crop softmax averages of both models on each image of `images` (decoded one at a time: 200 images' crops
    would take 1.2 GB at once): top-1 agreement, the largest probability difference, the images that differ."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    differ, worst = [], 0.0
    for path, name in tqdm(list(zip(images.paths, images.names(), strict=True)), desc="int8 vs fp32", unit="img",
                           leave=False, disable=None):
        (batch,) = ten_crop_batches(load_images([path]), pre)
        probs = []
        for session in sessions:
            (logits,) = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: batch})
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs.append((e / e.sum(axis=1, keepdims=True)).mean(axis=0))
        if np.argmax(probs[0]) != np.argmax(probs[1]):
            differ.append(name)
        worst = max(worst, float(np.max(np.abs(probs[0] - probs[1]))))
    count = len(images.paths)
    return {"images": count, "top1_agreement": (count - len(differ)) / max(count, 1), "max_prob_diff": worst,
            "disagreements": differ[:LISTED_DISAGREEMENTS]}


def publish_int8(store: ModelStore, name: str, fp32_path: Path, template: ModelMetadata, *,
                 calibration: Sequence[np.ndarray], calibration_source: str, check: ImageSet, held_out: bool,
                 origin: dict, min_agreement: float = DEFAULT_MIN_AGREEMENT, force: bool = False,
                 reduce_range: bool = False, method: str = "minmax",
                 log: Callable[[str], None] = print) -> ModelVersion:
    """Quantise `fp32_path`, compare the result with it on `check`, and publish it as a new version of `name`
    (metadata from `template` + int8 facts) if the gate passes or `force` is set; QuantizeError otherwise.

    Quantised and checked in a temporary folder: the store sees the file only once the gate has passed, so a
    refusal writes nothing there (not even the model's folder)."""
    pre = template.preprocessing
    with tempfile.TemporaryDirectory(prefix="alexnet-int8-") as tmp:
        out = Path(tmp) / "model.onnx"
        settings = quantize_onnx(fp32_path, out, calibration, input_name=template.onnx.input_name,
                                 reduce_range=reduce_range, method=method, log=log)
        agreement = compare(fp32_path, out, check, pre)
        passed = held_out and agreement["top1_agreement"] >= min_agreement
        differ = agreement["images"] - round(agreement["top1_agreement"] * agreement["images"])
        summary = (f"int8 top-1 agrees with fp32 on {100 * agreement['top1_agreement']:.1f} % of "
                   f"{agreement['images']} {'held-out' if held_out else 'calibration'} images ({check.label}, ten "
                   f"crops; {differ} differ)")
        log(f"{summary}, largest probability difference {agreement['max_prob_diff']:.3g}; gate: "
            f"{'passed' if passed else 'FAILED'} (--min-agreement {min_agreement:g})"
            f"{'' if passed or not force else ', published anyway (--force)'}")
        if not passed and not force:
            raise QuantizeError(f"{summary}, below --min-agreement {min_agreement:g}; nothing was published "
                                "(--force publishes it anyway)")
        model = onnx.load(str(out), load_external_data=False)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), template.onnx.opset)
        del model
        onnx_info = OnnxInfo(file=out.name, sha256=sha256_of(out), opset=opset, input_name=template.onnx.input_name,
                             output_name=template.onnx.output_name, bytes=out.stat().st_size,
                             features=template.onnx.features)  # QDQ keeps the graph's outputs, features too
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        quantization = {**settings, "from": origin,
                        "calibration": {"images": len(calibration), "crops_per_image": int(calibration[0].shape[0]),
                                        "source": calibration_source},
                        "check_vs_fp32": {**agreement, "crops_per_image": int(calibration[0].shape[0]),
                                          "held_out": held_out, "source": check.kind, "folder": check.label,
                                          "files": check.names()},
                        "gate": {"min_agreement": min_agreement, "passed": passed, "forced": not passed}}
        with store.new_version(name) as staging:
            shutil.move(out, staging.path / out.name)
            return staging.commit(lambda version: ModelMetadata(
                name=name, version=version, created_at=created, architecture=template.architecture,
                labels=template.labels, preprocessing=pre, onnx=onnx_info, parity=None,
                precision="int8", training=template.training,
                source={**template.source, "quantization": quantization},
            ))


def calibration_set(directory: Path | None, pre: Preprocessing, limit: int = DEFAULT_CALIBRATION_IMAGES,
                    log: Callable[[str], None] = print) -> tuple[list[np.ndarray], str, ImageSet]:
    """The calibration batches, how the metadata names their source, and the images (which the check avoids)."""
    if directory is not None:
        directory = training_folder(directory)  # so the log and the metadata name the folder used
        paths = find_images(directory, limit)
        log(f"calibrating on {len(paths)} images from {directory}")
        images = ImageSet.of(directory, paths, "training images")
        return ten_crop_batches(load_images(paths), pre), str(Path(directory).resolve()), images
    log("warning: no calibration folder given or known; calibrating on the two photographs shipped with "
        "scikit-learn (pass --calibration-dir with training images for a better int8 model)")
    paths = sample_photos()
    return ten_crop_batches(load_images(paths), pre), SAMPLE_PHOTOS, ImageSet.of(paths[0].parent, paths,
                                                                                 "sample photos")


def held_out_set(check_dir: Path | None, calibration: ImageSet, limit: int = DEFAULT_CHECK_IMAGES,
                 log: Callable[[str], None] = print) -> ImageSet | None:
    """The images the gate compares on, never calibration images: `check_dir` (its ``val/`` when it is a dataset
    root), else the ``val/`` split beside the calibration folder, else scikit-learn's two photographs. None when
    nothing is left (calibrated on those photographs, with no other folder known)."""
    if check_dir is not None:
        check_dir = Path(check_dir)
        folder, kind = check_dir / "val" if (check_dir / "val").is_dir() else check_dir, "check folder"
        if not folder.is_dir():
            raise QuantizeError(f"--check-dir {check_dir} does not exist")
    elif (val := val_split(calibration.folder)) is not None:
        folder, kind = val, "val split"
    else:
        folder, kind = sample_photos()[0].parent, "sample photos"
    exclude = frozenset(p.resolve() for p in calibration.paths)
    try:
        paths = pick_images(folder, limit, exclude=exclude)
    except QuantizeError:
        if kind == "check folder":
            raise
        return None
    images = ImageSet.of(folder, paths, kind)
    log(f"held-out images for the int8 check: {len(paths)} from {images.label}")
    return images


def _check_or_refuse(check_dir: Path | None, calibration: ImageSet, check_images: int, force: bool,
                     log: Callable[[str], None]) -> tuple[ImageSet, bool]:
    """The held-out set and True; with none and `force`, the calibration images and False; else QuantizeError."""
    check = held_out_set(check_dir, calibration, check_images, log)
    if check is not None:
        return check, True
    if not force:
        raise QuantizeError("no held-out images for the int8 check (the calibration used scikit-learn's sample "
                            "photographs and no val/ split is known): pass --check-dir DIR or --calibration-dir "
                            "DATA with a DATA/val, or --force to publish unchecked")
    log("warning: no held-out images; comparing on the calibration images (--force: published whatever they show)")
    return ImageSet.of(calibration.folder, calibration.paths[:check_images], calibration.kind), False


def quantize_store_version(store: ModelStore, source: ModelVersion, *, name: str | None = None,
                           calibration_dir: Path | None = None, calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                           check_dir: Path | None = None, check_images: int = DEFAULT_CHECK_IMAGES,
                           min_agreement: float = DEFAULT_MIN_AGREEMENT, force: bool = False,
                           reduce_range: bool = False, method: str = "minmax",
                           log: Callable[[str], None] = print) -> ModelVersion:
    """An fp32 version already in the store → a new int8 version (of the same name unless `name` is given), if
    it passes the gate (or `force`)."""
    if source.metadata.precision != "fp32":
        raise QuantizeError(f"{source.path} is already {source.metadata.precision}; quantise an fp32 version")
    source.verify()
    pre = source.metadata.preprocessing
    calibration, where, used = calibration_set(calibration_dir, pre, calibration_images, log)
    check, held_out = _check_or_refuse(check_dir, used, check_images, force, log)
    origin = {"name": source.name, "version": source.version, "sha256": source.metadata.onnx.sha256}
    return publish_int8(store, name or source.name, source.onnx_path, source.metadata, calibration=calibration,
                        calibration_source=where, check=check, held_out=held_out, origin=origin,
                        min_agreement=min_agreement, force=force, reduce_range=reduce_range, method=method, log=log)


def export_int8(model: nn.Module, store: ModelStore, name: str, labels: Sequence[Label], preprocessing: Preprocessing,
                *, training: TrainingSummary | None = None, source: dict | None = None, opset: int = DEFAULT_OPSET,
                images: Sequence[Image.Image] | None = None, tolerance: float = PARITY_TOLERANCE,
                calibration_dir: Path | None = None, calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                check_dir: Path | None = None, check_images: int = DEFAULT_CHECK_IMAGES,
                min_agreement: float = DEFAULT_MIN_AGREEMENT, force: bool = False,
                reduce_range: bool = False, method: str = "minmax",
                log: Callable[[str], None] = print) -> ModelVersion:
    """`alexnet-export --quantize int8`: a PyTorch model → parity-checked fp32 ONNX → a new int8 version, if it
    passes the gate (or `force`)."""
    check_labels(model, labels)
    with tempfile.TemporaryDirectory(prefix="alexnet-export-") as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        calibration, where, used = calibration_set(calibration_dir, preprocessing, calibration_images, log)
        check, held_out = _check_or_refuse(check_dir, used, check_images, force, log)
        checked = export_checked_onnx(model, fp32_path, labels, preprocessing, source=source, opset=opset,
                                      images=images, tolerance=tolerance, log=log)
        template = ModelMetadata(
            name=name, version=1, created_at="", architecture=checked.architecture, labels=tuple(labels),
            preprocessing=preprocessing, onnx=checked.onnx, training=training, source=checked.source)
        origin = {"fp32_parity": {"max_rel_diff": checked.parity.max_rel_diff, "tolerance": tolerance,
                                  "images": len(checked.images)},
                  "fp32_sha256": checked.onnx.sha256}
        return publish_int8(store, name, fp32_path, template, calibration=calibration, calibration_source=where,
                            check=check, held_out=held_out, origin=origin, min_agreement=min_agreement, force=force,
                            reduce_range=reduce_range, method=method, log=log)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.quantize",
        description="Quantise an fp32 version of the model store to INT8 (ONNX Runtime static QDQ, per-channel "
                    "int8 weights, uint8 activations) and publish it as a new version with precision int8, if its "
                    "top-1 agrees with the fp32 model's on held-out images (--min-agreement; exit status 2 and "
                    "nothing published otherwise). The new version's path is printed on the last line.")
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="store root (default: %(default)s)")
    p.add_argument("--name", help="model to quantise (default: the only model in the store)")
    p.add_argument("--version", type=int, help="fp32 version to quantise (default: the newest fp32 version)")
    p.add_argument("--output-name", help="publish under this name instead (default: the same name)")
    add_int8_arguments(p)
    return p


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def add_int8_arguments(p: argparse.ArgumentParser) -> None:
    """The options both INT8 commands share: calibration, and the gate."""
    p.add_argument("--calibration-dir", type=Path,
                   help="training images for calibration: an ImageNet-layout dataset or train/ folder, or any image "
                        "folder (default: the checkpoint's training set when it is still there, else two sample "
                        "photographs)")
    p.add_argument("--calibration-images", type=_positive, default=DEFAULT_CALIBRATION_IMAGES,
                   help="images to calibrate on, spread over the classes (default: %(default)s; ten crops each)")
    p.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax",
                   help="activation ranges from min/max, a percentile or entropy (default: %(default)s)")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: avoids int16 saturation in u8s8 kernels on CPUs without VNNI, at some "
                        "accuracy cost (default: off)")
    p.add_argument("--check-dir", type=Path,
                   help="held-out images the int8 model is compared with the fp32 one on: a folder, or a dataset "
                        "root (its val/) (default: the val/ split beside the calibration folder, else scikit-learn's "
                        "two sample photographs); calibration images are never used")
    p.add_argument("--check-images", type=_positive, default=DEFAULT_CHECK_IMAGES,
                   help="held-out images to compare on, spread over the classes (default: %(default)s)")
    p.add_argument("--min-agreement", type=_fraction, default=DEFAULT_MIN_AGREEMENT,
                   help="publish only if the int8 model's ten-crop top-1 agrees with the fp32 model's on at least "
                        "this fraction of the held-out images (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="publish even if the check fails or finds no held-out images; the metadata records it "
                        "(source.quantization.gate.forced)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = ModelStore(args.model_store)
        if args.version is None:
            source = store.newest(args.name or store.resolve().name, "fp32")
        else:
            source = store.resolve(args.name, args.version)
        version = quantize_store_version(
            store, source, name=args.output_name, calibration_dir=args.calibration_dir,
            calibration_images=args.calibration_images, check_dir=args.check_dir, check_images=args.check_images,
            min_agreement=args.min_agreement, force=args.force, reduce_range=args.reduce_range,
            method=args.calibration_method, log=lambda m: print(m, file=sys.stderr))
    except (QuantizeError, StoreError) as exc:
        print(f"quantize: error: {exc}", file=sys.stderr)
        return 2
    print(version.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
