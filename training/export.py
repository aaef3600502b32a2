"""Export a network (any `--arch`) to a new, parity-checked version in the model store: the library behind
`alexnet-export` (training/export_cli.py), `alexnet-demo`, the experiment and the INT8 export.

Every export runs ONNX Runtime against PyTorch on the ten crops of real photographs and refuses to
publish when the largest difference exceeds the tolerance (relative to the largest reference logit).
The version is staged in a hidden directory and renamed into place: an existing version is never
touched and a failed export leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from alexnet_store import (
    Features,
    Label,
    ModelMetadata,
    ModelStore,
    ModelVersion,
    OnnxInfo,
    Parity,
    Preprocessing,
    TrainingSummary,
)
from alexnet_store.metadata import Architecture
from alexnet_store.store import sha256_of
from alexnet_store.vocabulary import IMAGE_SUFFIXES
from training.alexnet import INPUT_SIZE
from training.architectures import describe, input_shape, penultimate
from training.presets import ten_crop_transform

DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4
LOGITS_OUTPUT = "logits"
FEATURES_OUTPUT = "features"  # the penultimate layer (training/architectures.py `penultimate`), issue 20


class ExportError(RuntimeError):
    pass


def export_onnx(model: nn.Module, path: Path, opset: int = DEFAULT_OPSET, input_size: int = INPUT_SIZE,
                features: bool = True) -> Features | None:
    """Write `model` as ONNX with a dynamic batch dimension: input float32 [N, C, size, size] → logits [N, K] and,
    with `features`, its penultimate layer as a second output, ``features`` float32 [N, D] (what it is: `Features`,
    returned for the metadata)."""
    model = model.eval().cpu()
    example = torch.zeros(2, *input_shape(model, input_size))
    batch = torch.export.Dim("batch", min=1, max=4096)
    split = penultimate(model).eval() if features else None
    outputs = [LOGITS_OUTPUT, FEATURES_OUTPUT] if split is not None else [LOGITS_OUTPUT]
    torch.onnx.export(
        split if split is not None else model, (example,), str(path), dynamo=True, opset_version=opset,
        external_data=False, input_names=["input"], output_names=outputs, dynamic_shapes=({0: batch},),
    )
    onnx.checker.check_model(str(path))
    if split is None:
        return None
    with torch.inference_mode():
        dim = int(split(example[:1])[1].shape[1])
    return Features(name=FEATURES_OUTPUT, dim=dim, layer=split.layer)


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


def ten_crop_inputs(images: Sequence[Image.Image], pre: Preprocessing) -> list[torch.Tensor]:
    """Each RGB image → the network's ten normalised crops [10, C, crop, crop], as `pre` prescribes."""
    transform = ten_crop_transform(pre.mean, pre.std, pre.resize_size, pre.crop_size, pre.input_channels,
                                   pre.interpolation)
    return [transform(img) for img in images]


def _differences(got: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """The largest absolute difference, and it relative to the largest reference value."""
    max_abs = float(np.max(np.abs(got - reference)))
    return max_abs, max_abs / max(float(np.max(np.abs(reference))), 1e-12)


def check_parity(model: nn.Module, onnx_path: Path, images: Sequence[Image.Image], pre: Preprocessing,
                 tolerance: float = PARITY_TOLERANCE, features: Features | None = None) -> Parity:
    """Compare ONNX Runtime (CPU) with PyTorch on the ten crops of each image, in one dynamic batch: the logits
    and, when the file has them, the features (PyTorch's from the same split of the network the export wrote)."""
    import onnxruntime as ort

    batch = torch.cat(ten_crop_inputs(images, pre))
    model = model.eval().cpu()
    with torch.inference_mode():
        if features is not None:
            reference, reference_features = (t.numpy() for t in penultimate(model).eval()(batch))
        else:
            reference, reference_features = model(batch).numpy(), None
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [LOGITS_OUTPUT] + ([features.name] if features is not None else [])
    got, *got_features = session.run(names, {session.get_inputs()[0].name: batch.numpy()})
    max_abs, max_rel = _differences(got, reference)
    extra = {}
    if features is not None:
        extra["features_max_abs_diff"], extra["features_max_rel_diff"] = _differences(got_features[0],
                                                                                      reference_features)
    return Parity(max_abs_diff=max_abs, max_rel_diff=max_rel, tolerance=tolerance, images=len(images), **extra)


def check_labels(model: nn.Module, labels: Sequence[Label]) -> None:
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
    model: nn.Module,
    path: Path,
    labels: Sequence[Label],
    preprocessing: Preprocessing,
    *,
    source: dict | None = None,
    opset: int = DEFAULT_OPSET,
    images: Sequence[Image.Image] | None = None,
    tolerance: float = PARITY_TOLERANCE,
    log: Callable[[str], None] = print,
) -> CheckedOnnx:
    """Export `model` to `path` and check it against PyTorch; ExportError if it is not fit to publish.

    Shared by the fp32 export and the INT8 one (which quantises this file), so both refuse the same models;
    both call `check_labels` first.
    """
    images = list(images) if images is not None else parity_images(None)
    log(f"exporting ONNX (opset {opset}) ...")
    features = export_onnx(model, path, opset, preprocessing.crop_size)
    parity = check_parity(model, path, images, preprocessing, tolerance, features)
    also = (f"; features ({features.layer}, {features.dim}): max rel diff {parity.features_max_rel_diff:.3g}"
            if features is not None else "")
    log(f"parity ONNX Runtime vs PyTorch on {parity.images} images × 10 crops: "
        f"max abs diff {parity.max_abs_diff:.3g}, max rel diff {parity.max_rel_diff:.3g}{also} "
        f"(tolerance {tolerance:g})")
    worst = max(parity.max_rel_diff, parity.features_max_rel_diff or 0.0)
    if worst > tolerance:
        raise ExportError(
            f"parity check failed: relative difference {worst:.3g} exceeds {tolerance:g}; "
            "nothing was written to the model store"
        )
    return CheckedOnnx(
        onnx=OnnxInfo(file=path.name, sha256=sha256_of(path), opset=opset, bytes=path.stat().st_size,
                      features=features),
        parity=parity, images=images, architecture=Architecture(**describe(model)),
        source={**(source or {}), "torch": torch.__version__},
    )


def export_to_store(
    model: nn.Module,
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
    log: Callable[[str], None] = print,
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
