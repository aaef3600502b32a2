"""Training checkpoints: everything `--resume` needs to continue exactly, and everything export needs.

Keys read by export (the contract between train and export): ``model_config``, ``model_state``,
``labels``, ``preprocessing``, ``summary``, ``lighting``. The rest (optimizer, scheduler, RNG states, history)
belongs to the training loop, which also reads ``lighting`` back on resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet_store import Label, Preprocessing, TrainingSummary
from alexnet_store.metadata import ColourLighting
from training.architectures import model_from_config
from training.presets import NO_LIGHTING, imagenet_lighting

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically (temporary file + rename) so an interrupted save never corrupts the last one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # Checkpoints hold plain tensors, numbers, strings, lists and dicts (RNG states included), so the
        # safe loader is enough.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    missing = [k for k in ("model_config", "model_state", "labels", "preprocessing") if k not in ckpt]
    if ckpt.get("format") != CHECKPOINT_FORMAT or missing:
        raise CheckpointError(f"{path} is not a training checkpoint of this project (missing {missing})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The trained network: its architecture from ``model_config`` (any `--arch`), its weights from the state."""
    model = model_from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["model_state"])
    return model


def labels_from_checkpoint(ckpt: dict[str, Any]) -> list[Label]:
    return [Label(id=str(i), name=str(n)) for i, n in ckpt["labels"]]


def preprocessing_from_checkpoint(ckpt: dict[str, Any]) -> Preprocessing:
    return Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["preprocessing"].items()})


def summary_from_checkpoint(ckpt: dict[str, Any]) -> TrainingSummary | None:
    if not ckpt.get("summary"):
        return None
    return TrainingSummary(**{**ckpt["summary"], "lighting": lighting_from_checkpoint(ckpt)})


def lighting_to_checkpoint(lighting: ColourLighting) -> dict[str, Any]:
    """The ``lighting`` entry: plain lists and numbers (the safe loader takes those)."""
    return {"eigen": lighting.eigen, "alpha_std": float(lighting.alpha_std), "eigval": list(lighting.eigval),
            "eigvec": [list(row) for row in lighting.eigvec], "images": lighting.images}


def lighting_from_checkpoint(ckpt: dict[str, Any]) -> ColourLighting | None:
    """The PCA colour lighting the run trained with. Checkpoints written before the ``lighting`` entry existed were
    trained with ImageNet's constants at their recorded ``--pca-std`` (none at 0), so that is what they get back —
    a resumed old run keeps its augmentation. None when the checkpoint says neither."""
    record = ckpt.get("lighting")
    if record is not None:
        return ColourLighting(eigen=record["eigen"], alpha_std=float(record["alpha_std"]),
                              eigval=tuple(float(v) for v in record["eigval"]),
                              eigvec=tuple(tuple(float(v) for v in row) for row in record["eigvec"]),
                              images=record.get("images"))
    alpha = (ckpt.get("args") or {}).get("pca_std")
    if alpha is None:
        return None
    return imagenet_lighting(float(alpha)) if alpha > 0 else NO_LIGHTING
