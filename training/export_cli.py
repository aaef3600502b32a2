"""`alexnet-export`: a checkpoint (or a random init) → a new, parity-checked version in the model store.

The command line only: the export itself is training/export.py, the INT8 variant training/quantize.py (both
libraries, neither imports this module).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from alexnet_store import Label, ModelStore, Preprocessing, StoreError, TrainingSummary
from alexnet_store.vocabulary import placeholder_label_names
from training.architectures import ARCHITECTURES, INIT_SCHEMES, ArchError, arch_spec, build_model, initialize
from training.checkpoint import (
    CheckpointError,
    labels_from_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    preprocessing_from_checkpoint,
    summary_from_checkpoint,
)
from training.export import DEFAULT_OPSET, PARITY_TOLERANCE, ExportError, export_to_store, parity_images
from training.labels import LabelsError, name_classes, read_label_file
from training.presets import crop_scheme, imagenet_mean_std
from training.quantize import QuantizeError, add_int8_arguments, default_calibration_dir, export_int8
from training.recipes import RECIPES, recipe_for


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alexnet-export",
        description="Export a network to ONNX as a new version in the model store: "
                    "<model-store>/<name>/<version>/{model.onnx,metadata.json}. Versions are numbered "
                    "1, 2, ... and never overwritten; the new version's path is printed on the last line. "
                    "Every export checks ONNX Runtime against PyTorch on real photographs and fails, "
                    "writing nothing, if they differ by more than --parity-tolerance.",
    )
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="store root (default: %(default)s)")
    p.add_argument("--name", required=True, help="model name: letters, digits, '.', '_', '-'")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a checkpoint written by alexnet-train (any --arch)")
    src.add_argument("--random-init", action="store_true",
                     help="export an untrained network (for tests and benchmarks); needs --num-classes or --labels")
    p.add_argument("--num-classes", type=int, help="classes of a --random-init model (default: from --labels)")
    p.add_argument("--labels", type=Path,
                   help="class names: a TSV with columns index, wnid, name (like imagenet_classes.tsv) or one "
                        "name per line; overrides the checkpoint's names")
    p.add_argument("--arch", choices=tuple(ARCHITECTURES), default="alexnet",
                   help="--random-init network (default: %(default)s)")
    p.add_argument("--recipe", choices=RECIPES, default="paper",
                   help="--random-init preprocessing (input size, resize, mean/std, crop scheme) as this recipe "
                        "trains the network (default: %(default)s)")
    p.add_argument("--no-grouping", action="store_true",
                   help="--random-init alexnet only: dense conv2/4/5 (torchvision's variant) instead of the paper's "
                        "groups=2")
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
                        "uint8 activations, calibrated on training images), if its top-1 agrees with the fp32 "
                        "model's on held-out images (--min-agreement; exit status 2 and nothing published "
                        "otherwise); its metadata says precision int8")
    add_int8_arguments(q)
    return p


def random_init_preprocessing(arch: str, recipe: str) -> Preprocessing:
    """What `recipe` would train `arch` on: its sizes, crop scheme and mean/std (ImageNet's where it computes them)."""
    r = recipe_for(recipe, arch)
    channels = arch_spec(arch).in_channels
    mean, std = ((0.0,) * channels, (1.0,) * channels) if r.mean_std == "none" else imagenet_mean_std(channels)
    return Preprocessing(resize_size=r.resize_size, crop_size=r.input_size, mean=mean, std=std,
                         crops=crop_scheme(flip=not r.no_flip), input_channels=channels)


def _model_from_args(args: argparse.Namespace) -> tuple[nn.Module, list[Label], Preprocessing,
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
    if args.no_grouping and args.arch != "alexnet":
        raise ExportError("--no-grouping applies to --arch alexnet only")
    labels = file_labels or [Label(id=name, name=name) for name in placeholder_label_names(num_classes)]
    torch.manual_seed(args.seed)
    options = {"grouped": not args.no_grouping} if args.arch == "alexnet" else {}
    width = recipe_for(args.recipe, args.arch).width_divisor
    if width != 1:
        options["width_divisor"] = width
    model = build_model(args.arch, num_classes, **options)
    initialize(model, args.init)
    pre = random_init_preprocessing(args.arch, args.recipe)
    source = {"random_init": True, "arch": args.arch, "recipe": args.recipe, "init": args.init, "seed": args.seed}
    return model, labels, pre, None, source, None


def main(argv: Sequence[str] | None = None) -> int:
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
                calibration_images=args.calibration_images, check_dir=args.check_dir,
                check_images=args.check_images, min_agreement=args.min_agreement, force=args.force,
                reduce_range=args.reduce_range, method=args.calibration_method)
        else:
            version = export_to_store(model, store, args.name, labels, pre, **common)
    except (ExportError, CheckpointError, LabelsError, StoreError, QuantizeError, ArchError) as exc:
        print(f"alexnet-export: error: {exc}", file=sys.stderr)
        return 2
    print(version.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
