"""`alexnet-import`: a model trained elsewhere → a new, parity-checked version in the model store (docs/models.md).

    alexnet-import --torchvision ARCH FILE [--weights ENUM] [--labels FILE] [--name NAME]
    alexnet-import --onnx FILE [--preset bvlc-alexnet|torchvision] [--config FILE.toml|.json]
                   [--channel-order RGB|BGR] [--pixel-range 0-1|0-255] [--mean M,M,M] [--std S,S,S]
                   [--resize-size N] [--crop-size N] [--interpolation bilinear|bicubic]
                   [--output auto|logits|probabilities] [--output-name NAME] [--labels FILE] [--name NAME]

- **torchvision weights** (``alexnet-owt-7be5be79.pth``, ``resnet50-11ad3fa6.pth``, ...): the state_dict goes into
  torchvision's own builder for ARCH (`torchvision.models.get_model_builder`, given the weights enum as if it had
  downloaded them, so googlenet's input transform and densenet's old key names are handled as torchvision handles
  them). The class names, resize and crop sizes, interpolation and mean/std come from the weights enum, which ships
  inside torchvision: the one whose file name the file has, else the arch's only ImageNet weights, else the one
  ``--weights`` names. A file named like torchvision's (``NAME-HASH.pth``, torch.hub's convention) must have a
  sha256 that begins with HASH. Nothing is ever downloaded.
- **ONNX classifiers**: the preprocessing is declared (a ``--preset``, then a TOML/JSON ``--config``, then the
  flags, each overriding the one before); input and output names, the crop size (where the graph fixes it) and
  whether the graph ends in a softmax are read from the graph. The graph is stored with a variable batch size
  (a batch fixed at 1 is freed, with the Reshape constants that repeat it) and only its input and chosen output.

Every import checks what the service will serve — the service's own patches (service/preprocess.py) through the
serving graph (service/graph.py) in an ONNX Runtime session, ten crops and the centre crop of real photographs —
against an independent reference: torchvision's forward on its weights' own ``transforms()`` (centre) and on
Resize → CenterCrop → ``TenCrop`` (ten), or, for ONNX, the original graph, unmodified, on patches cut and
normalised in numpy. Above the tolerance nothing is published. The version is staged and renamed into place like
every export (training/export.py); a refused import leaves nothing in the store.

Measured on this project's 2-core CPU machine: a torchvision AlexNet file (244 MB) imports in 11 s (sha256, strict
load, ONNX export 3.4 s, the check on scikit-learn's 2 photos: max |Δp| / max p 2.3e-7 against torchvision); the
end-to-end tests (tests/test_import.py) take 10 s (resnet18) to 73 s (vgg16, 528 MB) per arch, stand-in included.

It lives in bench/, the layer above training/ and service/, because the check needs both: torchvision (the
reference, and the ONNX export of a torchvision network) and the service's preprocessing and serving graph. The ONNX
path never imports PyTorch.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import io
import json
import math
import re
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from alexnet_store import Label, ModelMetadata, ModelStore, ModelVersion, OnnxInfo, Parity, Preprocessing, Source
from alexnet_store.metadata import Architecture, Interpolation, MetadataError
from alexnet_store.store import StoreError, sha256_of, validate_name
from alexnet_store.vocabulary import (
    CROP_SCHEMES,
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PIXEL_MAX,
    ChannelOrder,
    PixelRange,
    placeholder_label_names,
)

# The networks of the chapter in their ImageNet form; any other torchvision classification builder works the same way.
TORCHVISION_ARCHS = ("alexnet", "vgg11", "vgg16", "googlenet", "resnet18", "resnet50", "densenet121")
# torch.hub's convention for a weights file's name: NAME-HASH.EXT, HASH the first hex digits of its sha256
# (torch.hub.HASH_REGEX, which torchvision's downloads are checked with).
HUB_HASH = re.compile(r"-([a-f0-9]{8,64})\.[A-Za-z0-9]+$")
DEFAULT_TOLERANCE = 1e-3  # the largest |served - reference| of a probability ÷ the patch's largest probability
OUTPUT_CHOICES = ("auto", "logits", "probabilities")
ONNX_MIN_OPSET = 7  # the serving graph's Cast, Gather and Softmax as ONNX Runtime runs them
# Ops an output may pass through after the softmax and still be the softmax's probabilities.
_SHAPE_ONLY_OPS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout"}

# What a preset declares: the preprocessing a family of ONNX files was made for. Model facts of an imported version
# are written into its metadata from here, at import; the service reads them from the metadata, never from here.
PRESETS: dict[str, dict[str, Any]] = {
    # The ONNX model zoo's bvlcalexnet-*.onnx: Caffe's BVLC AlexNet (Caffe → Caffe2 → ONNX), which takes BGR pixels in
    # [0, 255] with Caffe's ImageNet mean (B 104, G 117, R 123) subtracted and no std, 224×224 (Caffe's own was 227),
    # and ends in a softmax.
    "bvlc-alexnet": {"channel_order": "BGR", "pixel_range": "0-255", "mean": (104.0, 117.0, 123.0),
                     "std": (1.0, 1.0, 1.0), "resize_size": 256, "crop_size": 224, "interpolation": "bilinear"},
    # A torchvision network exported to ONNX: RGB in [0, 1], ImageNet's mean/std, 256 → 224, bilinear.
    "torchvision": {"channel_order": "RGB", "pixel_range": "0-1", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                    "resize_size": 256, "crop_size": 224, "interpolation": "bilinear"},
}
CONFIG_KEYS = ("preset", "channel_order", "pixel_range", "mean", "std", "resize_size", "crop_size", "interpolation",
               "output", "output_name", "labels", "crops")


class ModelImportError(RuntimeError):
    """The file cannot be imported as asked; the message names the problem. Nothing was published."""


Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- what is being imported --------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """An import ready to be staged: the network's ONNX bytes, its metadata facts, and its parity reference."""

    onnx_bytes: bytes
    onnx: OnnxInfo
    labels: tuple[Label, ...]
    preprocessing: Preprocessing
    architecture: Architecture
    imported: Source
    source: dict[str, Any]
    # image bytes → {"ten": [10, K], "center": [1, K]} probabilities, independent of the service's code
    reference: Callable[[bytes], dict[str, np.ndarray]]
    reference_name: str


@dataclass(frozen=True)
class FileFacts:
    path: Path
    sha256: str
    bytes: int


def read_file_facts(path: Path, log: Log) -> FileFacts:
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    log(f"reading {path.name} ({path.stat().st_size / 1e6:,.1f} MB): sha256 ...")
    digest = sha256_of(path)
    return FileFacts(path, digest, path.stat().st_size)


def check_hub_hash(facts: FileFacts) -> str | None:
    """The hash prefix a torchvision-style file name promises, checked against the file: ModelImportError if it
    differs; None for a name without one."""
    match = HUB_HASH.search(facts.path.name)
    if match is None:
        return None
    prefix = match.group(1)
    if not facts.sha256.startswith(prefix):
        raise ModelImportError(
            f"{facts.path.name}: its name says its sha256 begins {prefix} (torchvision's NAME-HASH.pth convention) but "
            f"it begins {facts.sha256[:len(prefix)]}: the file is damaged, truncated or not the one its name says; "
            "refusing it (rename it only if you know where it came from)")
    return prefix


def parse_labels(path: Path | None, count: int, what: str) -> tuple[Label, ...] | None:
    """--labels: a TSV (index, wnid, name) or one name per line, exactly one entry per output of the network."""
    if path is None:
        return None
    from training.labels import LabelsError, read_label_file  # standard library only: no PyTorch

    try:
        labels = read_label_file(path)
    except LabelsError as exc:
        raise ModelImportError(str(exc)) from exc
    if len(labels) != count:
        raise ModelImportError(f"--labels {path.name} has {len(labels)} entries but {what} has {count} classes")
    return tuple(labels)


# -- torchvision -------------------------------------------------------------------------------------------------
def _torchvision_archs() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _file_name(weights: Any) -> str:
    return weights.url.rsplit("/", 1)[-1]


def resolve_weights(arch: str, file_name: str, requested: str | None) -> Any:
    """The torchvision weights enum member whose facts (classes, sizes, mean/std) the file is imported with."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError) as exc:
        raise ModelImportError(
            f"--torchvision {arch}: not one of torchvision's classification networks (the chapter's: "
            f"{', '.join(TORCHVISION_ARCHS)}; all {len(_torchvision_archs())}: torchvision.models.list_models())"
        ) from exc
    members = list(enum)
    classifiers = [w for w in members if w.meta.get("categories")]
    if requested:
        name = requested.split(".")[-1]
        if name not in enum.__members__:
            raise ModelImportError(f"--weights {requested}: {enum.__name__} has {', '.join(w.name for w in members)}")
        weights = enum[name]
        if weights not in classifiers:
            raise ModelImportError(f"{enum.__name__}.{name} is not a classifier's weights (it has no class names)")
        return weights
    named = [w for w in members if _file_name(w) == file_name]
    if named:
        if named[0] not in classifiers:
            raise ModelImportError(f"{file_name} is {named[0]}: not a classifier's weights (it has no class names)")
        return named[0]
    for other in _torchvision_archs():
        if other == arch:
            continue
        try:
            other_enum = get_model_weights(other)
        except (ValueError, KeyError):
            continue
        for w in other_enum:
            if _file_name(w) == file_name:
                raise ModelImportError(
                    f"{file_name} is torchvision's {other} weights ({w}), not {arch}'s: use --torchvision {other}")
    if len(classifiers) == 1:
        return classifiers[0]
    raise ModelImportError(
        f"{file_name} is not named like any of torchvision's {arch} weights, which come with different "
        f"preprocessing: say which with --weights ({', '.join(w.name for w in classifiers)})")


def load_state_dict(path: Path) -> dict[str, Any]:
    """A file written by ``torch.save(model.state_dict())``, loaded without running any pickled code."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        if (found := re.search(r"Unsupported global: GLOBAL (\S+)", text)) is not None:
            raise ModelImportError(
                f"{path.name} holds pickled Python objects ({found.group(1)}), not only tensors (a whole model saved "
                "with torch.save(model)?): import a state_dict, torch.save(model.state_dict(), FILE); no code from "
                "the file is ever run here (torch.load weights_only=True)") from exc
        reason = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        first = reason.group(1) if reason else (text.strip().splitlines() or [type(exc).__name__])[0]
        message = f"{path.name} is not a state_dict file torch.save wrote ({first.strip()[:200]})"
        raise ModelImportError(message) from exc
    if not isinstance(state, Mapping):
        raise ModelImportError(f"{path.name} holds a {type(state).__name__}, not a state_dict (a dict of tensors): "
                               "save model.state_dict()")
    nested = [k for k, v in state.items() if isinstance(v, Mapping)]
    if nested:
        raise ModelImportError(
            f"{path.name} is a checkpoint (its entries {nested[:5]} are dicts), not a state_dict: save the model's "
            "state_dict() itself (a training checkpoint usually has it under 'state_dict' or 'model')")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelImportError(f"{path.name}: entries {not_tensors[:5]} are not tensors; not a state_dict")
    return dict(state)


@contextlib.contextmanager
def _weights_give(weights: Any, state: dict[str, Any]) -> Iterator[None]:
    """While inside: `weights.get_state_dict()` returns `state` instead of downloading (torchvision's builders take
    the weights that way). Nothing is downloaded, whatever the builder asks."""
    enum = type(weights)
    enum.get_state_dict = lambda self, *args, **kwargs: dict(state)
    try:
        yield
    finally:
        del enum.get_state_dict


def _expected_state(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """The state_dict keys and shapes torchvision's `arch` builder loads weights into (built on the meta device: no
    memory, no init). googlenet and inception_v3 are built with the auxiliary heads their weights files carry."""
    import torch
    from torchvision.models import get_model_builder

    extra = {"aux_logits": True, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
    with torch.device("meta"):
        model = get_model_builder(arch)(weights=None, num_classes=num_classes, **extra)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# densenet's old key names ("denselayer1.norm.1.weight"), which its builder renames (torchvision's own pattern)
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def diagnose_state(arch: str, state: dict[str, Any], num_classes: int) -> str:
    """What is wrong between `state` and torchvision's `arch`: another listed arch's weights, missing and unexpected
    keys, shape mismatches, each with a few names."""
    got = {(_DENSENET_OLD_KEY.sub(r"\1\2", k) if arch.startswith("densenet") else k): tuple(v.shape)
           for k, v in state.items()}
    for other in TORCHVISION_ARCHS:
        if other == arch:
            continue
        theirs = {(_DENSENET_OLD_KEY.sub(r"\1\2", k) if other.startswith("densenet") else k): tuple(v.shape)
                  for k, v in state.items()}
        if theirs == _expected_state(other, num_classes):
            return f"it holds {other}'s weights, not {arch}'s (use --torchvision {other})"
    expected = _expected_state(arch, num_classes)
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {list(got[k])} (expected {list(expected[k])})" for k in expected
              if k in got and got[k] != expected[k]]
    parts = []
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            parts.append(f"{len(items)} {what}: {', '.join(items[:4])}{', ...' if len(items) > 4 else ''}")
    return "; ".join(parts)


def build_torchvision(arch: str, weights: Any, state: dict[str, Any], path: Path) -> Any:
    """torchvision's own builder for `arch`, given `weights` with the file's state_dict (strict loading)."""
    from torchvision.models import get_model_builder

    num_classes = len(weights.meta["categories"])
    try:
        with _weights_give(weights, state):
            model = get_model_builder(arch)(weights=weights)
    except RuntimeError as exc:
        detail = diagnose_state(arch, state, num_classes) or str(exc).strip().splitlines()[0][:500]
        raise ModelImportError(f"{path.name} does not fit torchvision's {arch} ({weights}): {detail}") from exc
    return model.eval()


def _interpolation(mode: Any) -> str:
    name = str(getattr(mode, "value", mode)).lower()
    if name not in get_args(Interpolation):
        raise ModelImportError(f"the weights resize with {name} interpolation; the service resizes with "
                               f"{' or '.join(get_args(Interpolation))} only")
    return name


def torchvision_preprocessing(weights: Any, crops: str) -> Preprocessing:
    t = weights.transforms()
    for attr in ("resize_size", "crop_size", "mean", "std", "interpolation"):
        if not hasattr(t, attr):
            raise ModelImportError(f"{weights}.transforms() is a {type(t).__name__} without {attr}: not an image "
                                   "classifier's preprocessing")

    def one(v: Any) -> int:
        return int(v[0] if isinstance(v, list | tuple) else v)

    return Preprocessing(resize_size=one(t.resize_size), crop_size=one(t.crop_size), mean=tuple(map(float, t.mean)),
                         std=tuple(map(float, t.std)), interpolation=_interpolation(t.interpolation), crops=crops)


def torchvision_reference(model: Any, weights: Any) -> Callable[[bytes], dict[str, np.ndarray]]:
    """torchvision's forward on the image: the centre crop through the weights' own transforms(), the ten crops
    through Resize → CenterCrop(resize) → TenCrop(crop) → Normalize, built from the same transforms' sizes."""
    import torch
    from PIL import Image, ImageOps
    from torchvision import transforms as T

    t = weights.transforms()
    resize, crop = t.resize_size[0], t.crop_size[0]
    normalise = T.Compose([T.PILToTensor(), T.ConvertImageDtype(torch.float32), T.Normalize(t.mean, t.std)])
    ten = T.Compose([T.Resize(resize, interpolation=t.interpolation, antialias=True), T.CenterCrop(resize),
                     T.TenCrop(crop), T.Lambda(lambda crops: torch.stack([normalise(c) for c in crops]))])

    def reference(data: bytes) -> dict[str, np.ndarray]:
        with Image.open(io.BytesIO(data)) as opened:
            img = ImageOps.exif_transpose(opened).convert("RGB")
        with torch.inference_mode():
            return {"ten": torch.softmax(model(ten(img)), dim=-1).numpy(),
                    "center": torch.softmax(model(t(img).unsqueeze(0)), dim=-1).numpy()}

    return reference


def torchvision_candidate(arch: str, path: Path, *, weights_name: str | None, labels_path: Path | None, crops: str,
                          opset: int, workdir: Path, log: Log) -> Candidate:
    import torch
    import torchvision

    facts = read_file_facts(path, log)
    if (prefix := check_hub_hash(facts)) is not None:
        log(f"sha256 {facts.sha256[:16]}… begins {prefix}, as its name says")
    weights = resolve_weights(arch, path.name, weights_name)
    categories = list(weights.meta["categories"])
    log(f"weights: {weights} ({len(categories)} classes); loading the state_dict ...")
    state = load_state_dict(path)
    model = build_torchvision(arch, weights, state, path)
    del state
    labels = parse_labels(labels_path, len(categories), f"{weights}") or tuple(
        Label(id=name, name=name) for name in categories)
    pre = torchvision_preprocessing(weights, crops)
    log(f"preprocessing from {weights}.transforms(): resize {pre.resize_size}, crop {pre.crop_size}, "
        f"{pre.interpolation}, mean {pre.mean}, std {pre.std}")
    from training.export import export_onnx

    onnx_path = workdir / "model.onnx"
    log(f"exporting torchvision's {arch} to ONNX (opset {opset}) ...")
    started = time.perf_counter()
    export_onnx(model, onnx_path, opset, pre.crop_size, features=False)  # no features output: not searched
    log(f"exported in {time.perf_counter() - started:.1f} s")
    metrics = weights.meta.get("_metrics", {}).get("ImageNet-1K", {})

    def accuracy(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    onnx_bytes = onnx_path.read_bytes()
    onnx_path.unlink()
    return Candidate(
        onnx_bytes=onnx_bytes,
        onnx=OnnxInfo(file="model.onnx", sha256="", opset=opset),
        labels=labels, preprocessing=pre,
        architecture=Architecture(name=arch, num_classes=len(labels),
                                  parameters=sum(p.numel() for p in model.parameters())),
        imported=Source(kind="torchvision", file=path.name, sha256=facts.sha256, bytes=facts.bytes, arch=arch,
                        weights=str(weights), top1=accuracy("acc@1"), top5=accuracy("acc@5")),
        source={"importer": "alexnet-import", "torch": torch.__version__, "torchvision": torchvision.__version__},
        reference=torchvision_reference(model, weights),
        reference_name=f"torchvision: {weights}.transforms() (centre) and Resize → CenterCrop → TenCrop (ten)",
    )


# -- ONNX ----------------------------------------------------------------------------------------------------------
def _numbers(text: Any, what: str) -> tuple[float, ...]:
    if isinstance(text, str):
        items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    elif isinstance(text, list | tuple):
        items = list(text)
    else:
        raise ModelImportError(f"{what}: expected a list of numbers, got {text!r}")
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError) as exc:
        raise ModelImportError(f"{what}: expected numbers, got {text!r}") from exc


def read_config(path: Path) -> dict[str, Any]:
    """A TOML or JSON file of preprocessing declarations (CONFIG_KEYS); `labels` is relative to the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelImportError(f"--config {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelImportError(f"--config {path.name}: not valid {path.suffix.lstrip('.').upper() or 'TOML'}: "
                               f"{exc}") from exc
    if not isinstance(data, dict):
        raise ModelImportError(f"--config {path.name}: expected a table of settings")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ModelImportError(f"--config {path.name}: unknown settings {unknown} (known: {', '.join(CONFIG_KEYS)})")
    if "labels" in data:
        data["labels"] = str((path.parent / str(data["labels"])).resolve())
    return data


@dataclass(frozen=True)
class Declared:
    """The ONNX import's declared preprocessing, merged: preset, then config file, then flags."""

    settings: dict[str, Any]
    preset: str | None


def declared_settings(preset: str | None, config: dict[str, Any] | None, flags: dict[str, Any]) -> Declared:
    config = dict(config or {})
    preset = flags.get("preset") or config.pop("preset", None) or preset
    config.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ModelImportError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    merged: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    merged.update(config)
    merged.update({k: v for k, v in flags.items() if v is not None and k != "preset"})
    return Declared(merged, preset)


def _dims(value_info: Any) -> list[int | str | None]:
    """A tensor's dimensions: ints where fixed, the symbol's name (or None) where not."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _initializer_names(graph: Any) -> set[str]:
    return {t.name for t in graph.initializer}


def _ends_in_softmax(graph: Any, output: str) -> bool:
    producers = {o: n for n in graph.node for o in n.output}
    name, seen = output, 0
    while name in producers and seen < 16:
        node = producers[name]
        if node.op_type in ("Softmax", "LogSoftmax"):
            return node.op_type == "Softmax"
        if node.op_type not in _SHAPE_ONLY_OPS or not node.input:
            return False
        name, seen = node.input[0], seen + 1
    return False


@dataclass(frozen=True)
class OnnxFacts:
    """What the graph says of itself."""

    input_name: str
    output_name: str
    input_dims: list[int | str | None]
    output_dims: list[int | str | None]
    channels: int
    size: int | None  # the patches' side where the graph fixes it
    fixed_batch: int | None
    ends_in_softmax: bool
    opset: int
    parameters: int
    graph_name: str


def inspect_onnx(model: Any, output_name: str | None, file_name: str) -> OnnxFacts:
    """ModelImportError unless the graph is an image classifier: one float NCHW input of 1 or 3 channels, an
    output [N, K] of class scores."""
    from onnx import TensorProto

    graph = model.graph
    inits = _initializer_names(graph)
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelImportError(f"{file_name} is not an image classifier: it has {len(inputs)} inputs "
                               f"({', '.join(i.name for i in inputs) or 'none'}); expected one image batch")
    (inp,) = inputs
    dims = _dims(inp)
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4:
        raise ModelImportError(
            f"{file_name} is not an image classifier: its input '{inp.name}' is "
            f"{TensorProto.DataType.Name(inp.type.tensor_type.elem_type).lower()} of shape {dims}; expected float "
            "[N, C, H, W]")
    if dims[1] not in (1, 3):
        raise ModelImportError(f"{file_name}: input '{inp.name}' has shape {dims}: expected 1 or 3 channels in "
                               "dimension 1 (NCHW)")
    h, w = dims[2], dims[3]
    if isinstance(h, int) and isinstance(w, int) and h != w:
        raise ModelImportError(f"{file_name}: input '{inp.name}' takes {h}×{w} patches; the service cuts square ones")
    size = h if isinstance(h, int) else (w if isinstance(w, int) else None)
    outputs = {o.name: o for o in graph.output}
    if output_name is not None:
        if output_name not in outputs:
            raise ModelImportError(f"--output-name {output_name}: {file_name} has outputs {list(outputs)}")
        out = outputs[output_name]
    elif len(outputs) == 1:
        (out,) = outputs.values()
    else:
        raise ModelImportError(f"{file_name} has {len(outputs)} outputs ({', '.join(outputs)}): name the class scores "
                               "with --output-name")
    out_dims = _dims(out)
    if out.type.tensor_type.elem_type != TensorProto.FLOAT or len(out_dims) != 2:
        raise ModelImportError(
            f"{file_name} is not a classifier: its output '{out.name}' has shape {out_dims}; expected float [N, K] "
            "class scores (one row per image)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < ONNX_MIN_OPSET:
        raise ModelImportError(f"{file_name} uses opset {opset}; import needs {ONNX_MIN_OPSET} or later (convert it "
                               "with onnx.version_converter.convert_version)")
    from onnx import numpy_helper

    parameters = sum(int(np.prod(t.dims)) for t in graph.initializer
                     if numpy_helper.to_array(t).dtype.kind == "f") if graph.initializer else 0
    return OnnxFacts(input_name=inp.name, output_name=out.name, input_dims=dims, output_dims=out_dims,
                     channels=int(dims[1]), size=size,
                     fixed_batch=dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None,
                     ends_in_softmax=_ends_in_softmax(graph, out.name), opset=opset, parameters=parameters,
                     graph_name=graph.name)


def _free_reshape_batch(graph: Any) -> list[str]:
    """Shape constants of Reshape nodes that fix the batch at 1 ([1, 9216]) made to follow it ([-1, 9216], or
    [0, -1] where -1 is taken): for a graph exported with a batch of 1. Only constants that feed nothing else."""
    from onnx import numpy_helper

    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    inits = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    changed = []
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        name = node.input[1]
        if any(c.op_type != "Reshape" or list(c.input[1:2]) != [name] for c in consumers[name]):
            continue
        if name in inits:
            tensor = inits[name]
        elif name in constants:
            attrs = [a for a in constants[name].attribute if a.name == "value"]
            if not attrs:
                continue
            tensor = attrs[0].t
        else:
            continue
        shape = numpy_helper.to_array(tensor).astype(np.int64).copy()
        if shape.ndim != 1 or len(shape) < 2 or shape[0] != 1:
            continue
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if -1 not in shape:
            shape[0] = -1
        elif not allowzero:
            shape[0] = 0
        else:
            continue
        tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
        changed.append(name)
    return changed


def normalise_onnx(model: Any, facts: OnnxFacts, log: Log) -> Any:
    """The network as the store keeps it: its one input (no initializers listed as inputs), its chosen output, a
    variable batch dimension on both, no intermediate shapes (ONNX Runtime infers them again)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = _initializer_names(g)
    keep_inputs = [i for i in g.input if i.name not in inits]
    del g.input[:]
    g.input.extend(keep_inputs)
    keep_outputs = [o for o in g.output if o.name == facts.output_name]
    del g.output[:]
    g.output.extend(keep_outputs)
    for value in (g.input[0], g.output[0]):
        first = value.type.tensor_type.shape.dim[0]
        first.Clear()
        first.dim_param = "batch"
    del g.value_info[:]
    out.ir_version = max(out.ir_version, 4)  # initializers need not be inputs from IR 4 on
    if facts.fixed_batch == 1:
        changed = _free_reshape_batch(g)
        if changed:
            log(f"the graph fixed its batch at 1: freed the Reshape shape(s) {', '.join(changed)}")
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise ModelImportError(f"the graph with a variable batch size is not valid ONNX: {exc}") from exc
    return out


def numpy_patches(data: bytes, pre: Preprocessing) -> dict[str, np.ndarray]:
    """The image → float32 NCHW network inputs {"ten": [10, ...], "center": [1, ...]}, written out in numpy (and
    Pillow's resize): shorter side to resize_size (antialiased), the central square, torchvision's TenCrop order,
    pixels to the declared range, the declared channel order, (x − mean) / std."""
    from PIL import Image, ImageOps

    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    with Image.open(io.BytesIO(data)) as opened:
        img = ImageOps.exif_transpose(opened).convert("RGB")
    s, c = pre.resize_size, pre.crop_size
    w, h = img.size
    size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    arr = np.asarray(img.resize(size, filters[pre.interpolation]) if size != img.size else img)
    top, left = round((arr.shape[0] - s) / 2.0), round((arr.shape[1] - s) / 2.0)  # torchvision's rounding
    square = arr[top:top + s, left:left + s]
    e, m = s - c, round((s - c) / 2.0)
    corners = [(0, 0), (0, e), (e, 0), (e, e), (m, m)]  # (top, left): tl, tr, bl, br, centre
    mirrored = square[:, ::-1]
    ten = [square[t:t + c, x:x + c] for t, x in corners] + [mirrored[t:t + c, x:x + c] for t, x in corners]
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)

    def network_input(patches: list[np.ndarray]) -> np.ndarray:
        x = np.stack(patches).astype(np.float32) * np.float32(PIXEL_MAX[pre.pixel_range] / 255.0)
        if pre.input_channels == 1:
            from alexnet_store.metadata import LUMA_WEIGHTS

            x = (x @ np.asarray(LUMA_WEIGHTS, np.float32))[..., None]
        elif pre.channel_order == "BGR":
            x = x[..., ::-1]
        return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)

    return {"ten": network_input(ten), "center": network_input([ten[4]])}


def _session(model: str | bytes) -> Any:
    """A CPU session that keeps ONNX Runtime's warnings about the graph (initializers listed as inputs) to itself."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def onnx_reference(path: Path, facts: OnnxFacts, pre: Preprocessing,
                   probabilities: bool) -> Callable[[bytes], dict[str, np.ndarray]]:
    """The original file, unmodified, in ONNX Runtime, one patch a run where it fixes its batch."""
    session = _session(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        rows = [x[i:i + 1] for i in range(len(x))] if facts.fixed_batch is not None else [x]
        out = np.concatenate([session.run([facts.output_name], {facts.input_name: r})[0] for r in rows])
        return out.astype(np.float32) if probabilities else _softmax(out)

    return lambda data: {scheme: run(x) for scheme, x in numpy_patches(data, pre).items()}


def onnx_preprocessing(declared: Declared, facts: OnnxFacts, file_name: str) -> tuple[Preprocessing, bool]:
    """The declared preprocessing, checked against the graph; and whether the graph outputs probabilities."""
    s = declared.settings
    missing = [k for k in ("mean", "std") if k not in s]
    if missing:
        raise ModelImportError(
            f"{file_name}: declare its preprocessing: {' and '.join(missing)} missing (give --preset "
            f"{' or '.join(PRESETS)}, a --config file, or --mean/--std; a mean-only model has --std 1,1,1)")
    channels = facts.channels
    mean, std = _numbers(s["mean"], "mean"), _numbers(s["std"], "std")
    if len(mean) != channels or len(std) != channels:
        raise ModelImportError(f"{file_name} takes {channels} channel(s) but the preprocessing has {len(mean)} mean "
                               f"and {len(std)} std values")
    order, pixel_range = s.get("channel_order", "RGB"), s.get("pixel_range", "0-1")
    if order not in get_args(ChannelOrder):
        raise ModelImportError(f"channel_order {order!r}: expected one of {get_args(ChannelOrder)}")
    if pixel_range not in get_args(PixelRange):
        raise ModelImportError(f"pixel_range {pixel_range!r}: expected one of {get_args(PixelRange)}")
    if channels == 1 and order != "RGB":
        raise ModelImportError(f"{file_name} takes 1 channel (the luma): channel_order {order} does not apply")
    interpolation = s.get("interpolation", "bilinear")
    if interpolation not in get_args(Interpolation):
        raise ModelImportError(f"interpolation {interpolation!r}: expected one of {get_args(Interpolation)}")
    crop = s.get("crop_size")
    if facts.size is not None:
        if crop is not None and int(crop) != facts.size:
            raise ModelImportError(f"crop_size {crop} was declared but the graph's input '{facts.input_name}' takes "
                                   f"{facts.size}×{facts.size} patches ({facts.input_dims})")
        crop = facts.size
    crop = int(crop if crop is not None else 224)
    resize = int(s.get("resize_size") or round(crop / 0.875))  # torchvision's convention: crop = 87.5 % of resize
    crops = s.get("crops", "ten")
    if crops not in CROP_SCHEMES:
        raise ModelImportError(f"crops {crops!r}: expected one of {CROP_SCHEMES}")
    output = s.get("output", "auto")
    if output not in OUTPUT_CHOICES:
        raise ModelImportError(f"output {output!r}: expected one of {OUTPUT_CHOICES}")
    if output == "logits" and facts.ends_in_softmax:
        raise ModelImportError(f"{file_name}'s output '{facts.output_name}' comes out of a Softmax: it is "
                               "probabilities, not logits (leave --output auto)")
    probabilities = facts.ends_in_softmax if output == "auto" else output == "probabilities"
    try:
        pre = Preprocessing(resize_size=resize, crop_size=crop, mean=mean, std=std, interpolation=interpolation,
                            crops=crops, input_channels=channels, channel_order=order, pixel_range=pixel_range)
        if crop > resize:
            raise MetadataError(f"crop_size {crop} is larger than resize_size {resize}")
        if min(std) <= 0:
            raise MetadataError("std values must be positive")
    except MetadataError as exc:
        raise ModelImportError(f"{file_name}: {exc}") from exc
    return pre, probabilities


def _num_classes(model: Any, facts: OnnxFacts, pre: Preprocessing, file_name: str) -> int:
    k = facts.output_dims[1]
    if isinstance(k, int) and k > 0:
        return k
    session = _session(model.SerializeToString())
    x = np.zeros((1, facts.channels, pre.crop_size, pre.crop_size), np.float32)
    try:
        (out,) = session.run([facts.output_name], {facts.input_name: x})
    except Exception as exc:
        raise ModelImportError(f"{file_name} does not run on a {pre.crop_size}×{pre.crop_size} patch: {exc}") from exc
    if out.ndim != 2:
        raise ModelImportError(f"{file_name} is not a classifier: its output has shape {list(out.shape)}")
    return int(out.shape[1])


def onnx_candidate(path: Path, declared: Declared, *, output_name: str | None, labels_path: Path | None,
                   log: Log) -> Candidate:
    import onnx
    import onnxruntime as ort
    from google.protobuf.message import DecodeError

    facts_file = read_file_facts(path, log)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise ModelImportError(f"{path.name} is not a valid ONNX model: {str(exc).strip()[:300]}") from exc
    facts = inspect_onnx(model, output_name, path.name)
    pre, probabilities = onnx_preprocessing(declared, facts, path.name)
    k = _num_classes(model, facts, pre, path.name)
    log(f"graph: {facts.input_name} {facts.input_dims} → {facts.output_name} {facts.output_dims} "
        f"({k} classes, {'ends in a softmax' if probabilities else 'logits'}); preprocessing {pre.channel_order} "
        f"{pre.pixel_range}, mean {pre.mean}, std {pre.std}, resize {pre.resize_size}, crop {pre.crop_size}")
    labels = parse_labels(labels_path, k, path.name)
    if labels is None:
        log(f"no --labels: the classes are named {placeholder_label_names(2)[0]} ... class_{k - 1}")
        labels = tuple(Label(id=n, name=n) for n in placeholder_label_names(k))
    stored = normalise_onnx(model, facts, log)
    stored_bytes = stored.SerializeToString()
    try:  # a batch of two patches: what a fixed batch inside the graph would refuse
        session = _session(stored_bytes)
        (out,) = session.run([facts.output_name], {
            facts.input_name: np.zeros((2, facts.channels, pre.crop_size, pre.crop_size), np.float32)})
    except Exception as exc:
        raise ModelImportError(
            f"{path.name} does not run with a batch of 2 once its batch dimension is freed ({str(exc)[:300]}); the "
            "service runs many patches at once: export the graph with a dynamic batch dimension") from exc
    if list(out.shape) != [2, k]:
        raise ModelImportError(f"{path.name}: a batch of 2 gives an output of shape {list(out.shape)}, not [2, {k}]")
    return Candidate(
        onnx_bytes=stored_bytes,
        onnx=OnnxInfo(file="model.onnx", sha256="", opset=facts.opset, input_name=facts.input_name,
                      output_name=facts.output_name, output_kind="probabilities" if probabilities else "logits"),
        labels=labels, preprocessing=pre,
        architecture=Architecture(name=facts.graph_name or path.stem, num_classes=k, parameters=facts.parameters),
        imported=Source(kind="onnx", file=path.name, sha256=facts_file.sha256, bytes=facts_file.bytes,
                        preset=declared.preset),
        source={"importer": "alexnet-import", "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        reference=onnx_reference(path, facts, pre, probabilities),
        reference_name="the original ONNX graph in ONNX Runtime, on patches cut and normalised in numpy",
    )


# -- the check and the publication ---------------------------------------------------------------------------------
def parity_files(directory: Path | None, limit: int) -> list[tuple[str, bytes]]:
    """Real photographs as file bytes: from `directory`, or the two scikit-learn ships (china.jpg, flower.jpg)."""
    if directory is None:
        import importlib.util

        spec = importlib.util.find_spec("sklearn")
        if spec is None or spec.origin is None:
            raise ModelImportError("no photographs for the parity check: pass --parity-images DIR (scikit-learn, "
                                   "whose two photos are the default, is not installed)")
        directory = Path(spec.origin).parent / "datasets" / "images"
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ModelImportError(f"no images found under {directory} for the parity check")
    return [(p.name, p.read_bytes()) for p in files]


def served_probabilities(version: ModelVersion, data: bytes) -> dict[str, np.ndarray]:
    """What the service answers for the image: its patches (service/preprocess.py) through the serving graph."""
    from service.preprocess import DecodeLimits, prepare_image

    pre = version.metadata.preprocessing
    limits = DecodeLimits(max_pixels=1 << 30, draft=False)  # the full decode: what the reference sees
    prepared = prepare_image(data, CROP_SCHEMES, pre.resize_size, pre.crop_size, limits, pre.interpolation)
    model = _served_model(version)
    return {scheme: model.predict(patches) for scheme, patches in prepared.patches.items()}


_SERVED: dict[Path, Any] = {}


def _served_model(version: ModelVersion) -> Any:
    from service.model import ClassifierModel

    if version.path not in _SERVED:
        model = ClassifierModel(version, providers=["CPUExecutionProvider"])
        model.load(warmup_batch=1)
        _SERVED.clear()
        _SERVED[version.path] = model
    return _SERVED[version.path]


def check_served(version: ModelVersion, candidate: Candidate, images: Sequence[tuple[str, bytes]], tolerance: float,
                 probabilities_declared: bool, log: Log) -> Parity:
    """Served probabilities against the candidate's reference, every patch of both schemes of every image."""
    worst_abs, worst_rel, worst_at = 0.0, 0.0, ""
    try:
        for name, data in images:
            served, reference = served_probabilities(version, data), candidate.reference(data)
            for scheme in CROP_SCHEMES:
                got, want = served[scheme], reference[scheme]
                if got.shape != want.shape:
                    raise ModelImportError(f"{name}: served {scheme} probabilities have shape {got.shape}, the "
                                           f"reference {want.shape}")
                if probabilities_declared and (np.any(got < -1e-6) or np.any(np.abs(got.sum(axis=1) - 1) > 1e-3)):
                    raise ModelImportError(
                        f"the graph's output is not probabilities (rows of {name} sum to "
                        f"{got.sum(axis=1).min():.4g}..{got.sum(axis=1).max():.4g}): declare --output logits")
                diff = np.abs(got.astype(np.float64) - want)
                # relative to each patch's largest probability: as strict for a near-uniform random init as for a
                # confident trained network (for small differences, Δp / p is the difference of the logits)
                rel = float(np.max(diff.max(axis=1) / np.maximum(want.max(axis=1), 1e-12)))
                worst_abs = max(worst_abs, float(diff.max()))
                if rel > worst_rel:
                    worst_rel, worst_at = rel, f"{name}, {scheme}"
    finally:
        _SERVED.clear()
    parity = Parity(max_abs_diff=worst_abs, max_rel_diff=worst_rel, tolerance=tolerance, images=len(images),
                    reference=candidate.reference_name)
    log(f"parity, served vs {candidate.reference_name}, on {len(images)} photos × (10 + 1) patches: max |Δp| "
        f"{worst_abs:.3g}, max |Δp| / max p {worst_rel:.3g}{f' ({worst_at})' if worst_at else ''}, tolerance "
        f"{tolerance:g}")
    if worst_rel > tolerance:
        raise ModelImportError(
            f"parity check failed: served probabilities differ from the reference by {worst_rel:.3g} of the largest "
            f"probability ({worst_at}), more than {tolerance:g}; nothing was written to the model store")
    return parity


def publish(candidate: Candidate, store: ModelStore, name: str, images: Sequence[tuple[str, bytes]],
            tolerance: float, log: Log) -> ModelVersion:
    """Stage the candidate, check what it serves, and commit it as the next version of `name` (atomically)."""
    model_dir = store.root / validate_name(name)
    existed = model_dir.exists()
    try:
        with store.new_version(name) as staging:
            path = staging.path / candidate.onnx.file
            path.write_bytes(candidate.onnx_bytes)
            onnx_info = dataclasses.replace(candidate.onnx, sha256=sha256_of(path), bytes=path.stat().st_size)
            created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

            def metadata(version: int, parity: Parity | None) -> ModelMetadata:
                return ModelMetadata(
                    name=name, version=version, created_at=created, architecture=candidate.architecture,
                    labels=candidate.labels, preprocessing=candidate.preprocessing, onnx=onnx_info, parity=parity,
                    source=candidate.source, imported=candidate.imported)

            try:
                ModelMetadata.from_json(metadata(1, None).to_json())
            except MetadataError as exc:
                raise ModelImportError(f"the metadata would not load: {exc}") from exc
            log("checking what the service will serve ...")
            parity = check_served(ModelVersion(staging.path, metadata(0, None)), candidate, images, tolerance,
                                  candidate.onnx.output_kind == "probabilities", log)
            return staging.commit(lambda version: metadata(version, parity))
    except BaseException:
        if not existed and model_dir.is_dir() and all(p.name == ".lock" for p in model_dir.iterdir()):
            shutil.rmtree(model_dir, ignore_errors=True)
        raise


# -- the command line ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alexnet-import",
        description="Publish a model trained elsewhere as a new version in the model store: torchvision's weights "
                    "files (with the preprocessing and class names of torchvision's weights enums) or an ONNX "
                    "classifier (with the preprocessing declared here). What the service will serve is checked "
                    "against an independent reference on real photographs first; nothing is published above "
                    "--parity-tolerance. The new version's path is printed on the last line. Nothing is downloaded.",
        epilog="Exit status: 0 published, 2 refused (the message names the problem; nothing was written). "
               "See docs/models.md.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--torchvision", nargs=2, metavar=("ARCH", "FILE"),
                     help=f"a torchvision state_dict file for ARCH ({', '.join(TORCHVISION_ARCHS)}, or any other "
                          "torchvision classification network)")
    src.add_argument("--onnx", type=Path, metavar="FILE", help="an ONNX image classifier")
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="store root (default: %(default)s)")
    p.add_argument("--name", help="model name in the store (default: torchvision-ARCH, or the ONNX file's stem)")
    p.add_argument("--labels", type=Path,
                   help="class names: a TSV with columns index, wnid, name (imagenet_classes.tsv: the wnids make "
                        "alexnet-eval match ImageNet's class folders) or one name per line; default: torchvision's "
                        "names, or class_0 ... for ONNX")
    p.add_argument("--crops", choices=CROP_SCHEMES, help="the crop scheme the service uses by default (default: ten)")
    t = p.add_argument_group("torchvision")
    t.add_argument("--weights", metavar="ENUM",
                   help="the weights enum member (e.g. IMAGENET1K_V2) when the file name is not torchvision's and the "
                        "arch has several")
    t.add_argument("--opset", type=int, default=18, help="ONNX opset of the export (default: %(default)s)")
    o = p.add_argument_group("ONNX preprocessing (a preset, then --config, then these flags)")
    o.add_argument("--preset", choices=tuple(PRESETS),
                   help="bvlc-alexnet: the ONNX zoo's BVLC AlexNet (BGR, 0-255, mean 104,117,123, no std); "
                        "torchvision: a torchvision export (RGB, 0-1, ImageNet mean/std)")
    o.add_argument("--config", type=Path, metavar="FILE",
                   help=f"a TOML or JSON file with any of: {', '.join(CONFIG_KEYS)}")
    o.add_argument("--channel-order", choices=get_args(ChannelOrder))
    o.add_argument("--pixel-range", choices=get_args(PixelRange), help="pixels as 0-1 or 0-255 before mean/std")
    o.add_argument("--mean", metavar="M,M,M", help="per channel, in the network's channel order and pixel units")
    o.add_argument("--std", metavar="S,S,S", help="per channel (1,1,1: mean only)")
    o.add_argument("--resize-size", type=int, help="shorter side before the central square (default: crop ÷ 0.875)")
    o.add_argument("--crop-size", type=int, help="patch side (default: the graph's, else 224)")
    o.add_argument("--interpolation", choices=get_args(Interpolation))
    o.add_argument("--output", choices=OUTPUT_CHOICES,
                   help="whether the graph outputs logits or probabilities (default auto: probabilities when it ends "
                        "in a Softmax)")
    o.add_argument("--output-name", help="the class-score output, for a graph with several")
    c = p.add_argument_group("the parity check")
    c.add_argument("--parity-images", type=Path, metavar="DIR",
                   help="real photographs (default: the two scikit-learn ships)")
    c.add_argument("--parity-limit", type=int, default=4, help="photos checked (default: %(default)s)")
    c.add_argument("--parity-tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest allowed |served - reference| of a probability, relative to the patch's largest "
                        "probability (default: %(default)g)")
    return p


def default_name(args: argparse.Namespace) -> str:
    if args.torchvision:
        return f"torchvision-{args.torchvision[0]}"
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", args.onnx.stem).lstrip("._-")
    return stem[:64] or "onnx-model"


def run(args: argparse.Namespace, log: Log = _stderr) -> ModelVersion:
    name = validate_name(args.name or default_name(args))
    store = ModelStore(args.model_store)
    images = parity_files(args.parity_images, args.parity_limit)
    with tempfile.TemporaryDirectory(prefix="alexnet-import-") as tmp:
        workdir = Path(tmp)
        if args.torchvision:
            arch, file = args.torchvision
            if any([args.preset, args.config, args.channel_order, args.pixel_range, args.mean, args.std,
                    args.resize_size, args.crop_size, args.interpolation, args.output, args.output_name]):
                raise ModelImportError("the preprocessing of torchvision weights comes from torchvision's weights "
                                       "enum: the ONNX preprocessing options do not apply")
            candidate = torchvision_candidate(arch, Path(file), weights_name=args.weights, labels_path=args.labels,
                                              crops=args.crops or "ten", opset=args.opset, workdir=workdir, log=log)
        else:
            if args.weights:
                raise ModelImportError("--weights applies to --torchvision imports")
            config = read_config(args.config) if args.config else None
            flags = {"preset": args.preset, "channel_order": args.channel_order, "pixel_range": args.pixel_range,
                     "mean": args.mean, "std": args.std, "resize_size": args.resize_size,
                     "crop_size": args.crop_size, "interpolation": args.interpolation, "output": args.output,
                     "crops": args.crops}
            declared = declared_settings(None, config, flags)
            labels = args.labels or (Path(declared.settings["labels"]) if "labels" in declared.settings else None)
            output_name = args.output_name or declared.settings.get("output_name")
            candidate = onnx_candidate(args.onnx, declared, output_name=output_name, labels_path=labels, log=log)
    return publish(candidate, store, name, images, args.parity_tolerance, log)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        version = run(args)
    except (ModelImportError, StoreError) as exc:
        print(f"alexnet-import: error: {exc}", file=sys.stderr)
        return 2
    _stderr(f"published {version.name} v{version.version} in {time.perf_counter() - started:.1f} s")
    print(version.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
