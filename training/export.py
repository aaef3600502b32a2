"""`alexnet-export`: a checkpoint (or a random init) → a new, parity-checked version in the model store.

Every export runs ONNX Runtime against PyTorch on the ten crops of real photographs and refuses to
publish when the largest difference exceeds the tolerance (relative to the largest reference logit).
The version is staged in a hidden directory and renamed into place: an existing version is never
touched and a failed export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

from alexnet_store import (
    Label,
    ModelMetadata,
    ModelStore,
    ModelVersion,
    OnnxInfo,
    Parity,
    Preprocessing,
    StoreError,
    TrainingSummary,
)
from alexnet_store.metadata import Architecture
from alexnet_store.store import sha256_of
from training.checkpoint import (
    CheckpointError,
    labels_from_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    preprocessing_from_checkpoint,
    summary_from_checkpoint,
)
from training.labels import LabelsError, name_classes, read_label_file
from training.network import INIT_SCHEMES, INPUT_SIZE, AlexNet, build_alexnet
from training.presets import IMAGENET_MEAN, IMAGENET_STD, ten_crop_transform

DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class ExportError(RuntimeError):
    pass


def export_onnx(model: AlexNet, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Write `model` as ONNX with a dynamic batch dimension: input float32 [N, 3, 224, 224] → logits [N, K]."""
    model = model.eval().cpu()
    example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model, (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
        input_names=["input"], output_names=["logits"], dynamic_shapes={"x": {0: batch}},
    )
    onnx.checker.check_model(str(path))


def parity_images(directory: Path | None, limit: int = 4) -> list[Image.Image]:
    """Real photographs: from `directory`, or the two photos that ship inside scikit-learn's wheel."""
    if directory is not None:
        files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        if not files:
            raise ExportError(f"no images found under {directory} for the parity check")
        return load_images(files)
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(img) for img in load_sample_images().images][:limit]


def load_images(paths: Sequence[Path]) -> list[Image.Image]:
    """Decode as RGB, closing each file (some formats keep it open until the image is dropped)."""
    images = []
    for path in paths:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    return images


def check_parity(model: AlexNet, onnx_path: Path, images: Sequence[Image.Image], pre: Preprocessing,
                 tolerance: float = PARITY_TOLERANCE) -> Parity:
    """Compare ONNX Runtime (CPU) with PyTorch on the ten crops of each image, in one dynamic batch."""
    import onnxruntime as ort

    transform = ten_crop_transform(pre.mean, pre.std, pre.resize_size, pre.crop_size)
    batch = torch.cat([transform(img) for img in images])
    with torch.inference_mode():
        reference = model.eval().cpu()(batch).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    max_abs = float(np.max(np.abs(got - reference)))
    max_rel = max_abs / max(float(np.max(np.abs(reference))), 1e-12)
    return Parity(max_abs_diff=max_abs, max_rel_diff=max_rel, tolerance=tolerance, images=len(images))


def check_labels(model: AlexNet, labels: Sequence[Label]) -> None:
    """Before anything is exported or staged: a label for every output of the network."""
    if len(labels) != model.num_classes:
        raise ExportError(f"{len(labels)} labels for a model with {model.num_classes} classes")


@dataclass(frozen=True)
class CheckedOnnx:
    """An exported ONNX file that passed the parity check, with the metadata facts every publisher records."""

    onnx: OnnxInfo
    parity: Parity
    images: list[Image.Image]  # the photographs of the parity check
    architecture: Architecture
    source: dict


def export_checked_onnx(
    model: AlexNet,
    path: Path,
    labels: Sequence[Label],
    preprocessing: Preprocessing,
    *,
    source: dict | None = None,
    opset: int = DEFAULT_OPSET,
    images: Sequence[Image.Image] | None = None,
    tolerance: float = PARITY_TOLERANCE,
    log=print,
) -> CheckedOnnx:
    """Export `model` to `path` and check it against PyTorch; ExportError if it is not fit to publish.

    Shared by the fp32 export and the INT8 one (which quantises this file), so both refuse the same models;
    both call `check_labels` first.
    """
    images = list(images) if images is not None else parity_images(None)
    log(f"exporting ONNX (opset {opset}) ...")
    export_onnx(model, path, opset)
    parity = check_parity(model, path, images, preprocessing, tolerance)
    log(f"parity ONNX Runtime vs PyTorch on {parity.images} images × 10 crops: "
        f"max abs diff {parity.max_abs_diff:.3g}, max rel diff {parity.max_rel_diff:.3g} "
        f"(tolerance {tolerance:g})")
    if parity.max_rel_diff > tolerance:
        raise ExportError(
            f"parity check failed: relative difference {parity.max_rel_diff:.3g} exceeds {tolerance:g}; "
            "nothing was written to the model store"
        )
    return CheckedOnnx(
        onnx=OnnxInfo(file=path.name, sha256=sha256_of(path), opset=opset, bytes=path.stat().st_size),
        parity=parity, images=images, architecture=Architecture(**model.describe()),
        source={**(source or {}), "torch": torch.__version__},
    )


def export_to_store(
    model: AlexNet,
    store: ModelStore,
    name: str,
    labels: Sequence[Label],
    preprocessing: Preprocessing,
    *,
    training: TrainingSummary | None = None,
    source: dict | None = None,
    opset: int = DEFAULT_OPSET,
    images: Sequence[Image.Image] | None = None,
    tolerance: float = PARITY_TOLERANCE,
    log=print,
) -> ModelVersion:
    check_labels(model, labels)
    with store.new_version(name) as staging:
        checked = export_checked_onnx(model, staging.path / "model.onnx", labels, preprocessing, source=source,
                                      opset=opset, images=images, tolerance=tolerance, log=log)
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return staging.commit(lambda version: ModelMetadata(
            name=name, version=version, created_at=created, architecture=checked.architecture,
            labels=tuple(labels), preprocessing=preprocessing, onnx=checked.onnx, parity=checked.parity,
            training=training, source=checked.source,
        ))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alexnet-export",
        description="Export AlexNet to ONNX as a new version in the model store: "
                    "<model-store>/<name>/<version>/{model.onnx,metadata.json}. Versions are numbered "
                    "1, 2, ... and never overwritten; the new version's path is printed on the last line. "
                    "Every export checks ONNX Runtime against PyTorch on real photographs and fails, "
                    "writing nothing, if they differ by more than --parity-tolerance.",
    )
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="store root (default: %(default)s)")
    p.add_argument("--name", required=True, help="model name: letters, digits, '.', '_', '-'")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a checkpoint written by alexnet-train")
    src.add_argument("--random-init", action="store_true",
                     help="export an untrained network (for tests and benchmarks); needs --num-classes or --labels")
    p.add_argument("--num-classes", type=int, help="classes of a --random-init model (default: from --labels)")
    p.add_argument("--labels", type=Path,
                   help="class names: a TSV with columns index, wnid, name (like imagenet_classes.tsv) or one "
                        "name per line; overrides the checkpoint's names")
    p.add_argument("--no-grouping", action="store_true",
                   help="--random-init only: dense conv2/4/5 (torchvision's variant) instead of the paper's groups=2")
    p.add_argument("--init", choices=INIT_SCHEMES, default="paper",
                   help="--random-init weight init (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="--random-init seed (default: %(default)s)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    p.add_argument("--parity-images", type=Path,
                   help="folder of real images for the parity check (default: the photos shipped with scikit-learn)")
    p.add_argument("--parity-tolerance", type=float, default=PARITY_TOLERANCE,
                   help="largest allowed |onnx - torch| / max|torch| (default: %(default)g)")
    q = p.add_argument_group("INT8 (training/quantize.py)")
    q.add_argument("--quantize", choices=["int8"],
                   help="publish a statically quantised version instead (ONNX Runtime QDQ, per-channel int8 weights, "
                        "uint8 activations, calibrated on training images); its metadata says precision int8")
    from training.quantize import add_calibration_arguments

    add_calibration_arguments(q)
    return p


def _model_from_args(args: argparse.Namespace) -> tuple[AlexNet, list[Label], Preprocessing,
                                                         TrainingSummary | None, dict, dict | None]:
    """The model to export, its labels, preprocessing, training summary, source record and checkpoint (if any)."""
    file_labels = read_label_file(args.labels) if args.labels else None
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(ckpt)
        labels = labels_from_checkpoint(ckpt)
        if file_labels is not None:
            # Keep the checkpoint's class ids (its folder names, which evaluation matches on) and take the names
            # from the file: matched by wnid/name, or in order when the file has one entry per class.
            labels = name_classes([lab.id for lab in labels], file_labels, args.labels)
        summary = summary_from_checkpoint(ckpt)
        pre = preprocessing_from_checkpoint(ckpt)
        return model, labels, pre, summary, {"checkpoint": str(args.checkpoint.resolve())}, ckpt
    num_classes = args.num_classes or (len(file_labels) if file_labels else None)
    if not num_classes or num_classes < 1:
        raise ExportError("--random-init needs --num-classes K (K >= 1) or --labels")
    if file_labels is not None and len(file_labels) != num_classes:
        raise ExportError(f"--labels has {len(file_labels)} entries but --num-classes is {num_classes}")
    labels = file_labels or [Label(id=f"class_{i}", name=f"class_{i}") for i in range(num_classes)]
    torch.manual_seed(args.seed)
    model = build_alexnet(num_classes, grouped=not args.no_grouping, init=args.init)
    pre = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return model, labels, pre, None, {"random_init": True, "init": args.init, "seed": args.seed}, None


def main(argv: Sequence[str] | None = None) -> int:
    from training.quantize import QuantizeError, default_calibration_dir, export_int8

    args = build_parser().parse_args(argv)
    try:
        model, labels, pre, summary, source, ckpt = _model_from_args(args)
        if args.quantize and args.calibration_dir is None:
            args.calibration_dir = default_calibration_dir(ckpt)
        del ckpt  # its weights are in `model`: hold no second copy (nor the optimizer state) through the export
        store = ModelStore(args.model_store)
        common = {"training": summary, "source": source, "opset": args.opset,
                  "images": parity_images(args.parity_images), "tolerance": args.parity_tolerance,
                  "log": lambda m: print(m, file=sys.stderr)}
        if args.quantize:
            version = export_int8(
                model, store, args.name, labels, pre, **common, calibration_dir=args.calibration_dir,
                calibration_images=args.calibration_images, reduce_range=args.reduce_range,
                method=args.calibration_method)
        else:
            version = export_to_store(model, store, args.name, labels, pre, **common)
    except (ExportError, CheckpointError, LabelsError, StoreError, QuantizeError) as exc:
        print(f"alexnet-export: error: {exc}", file=sys.stderr)
        return 2
    print(version.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
