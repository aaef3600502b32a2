"""`metadata.json`: what travels with every model version.

Writers build a `ModelMetadata` and call `to_json()`; readers call `ModelMetadata.from_json()`, which
rejects a file that lacks a field or has one of the wrong type with a message naming the field, so a
broken store fails at load time with a clear error instead of at the first request.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from alexnet_store.vocabulary import (
    CROP_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_SIZE,
    ChannelOrder,
    CropScheme,
    PixelRange,
)

FORMAT_VERSION = 1

Interpolation = Literal["bilinear", "bicubic"]  # Pillow's antialiased filters, which the service resizes with
Precision = Literal["fp32", "int8"]
LightingEigen = Literal["computed", "imagenet", "none"]
OutputKind = Literal["logits", "probabilities"]  # probabilities: the graph ends in its own softmax
SourceKind = Literal["torchvision", "onnx"]
# How a 1-channel model sees an RGB image: its luma, Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601), the weights of
# Pillow's convert("L") and, to within 1e-4, of torchvision's Grayscale. They sum to 1, so a grey image (R = G = B)
# gives its own grey level back. The serving graph applies them (service/graph.py); training applies them to RGB
# batches it augmented in colour (training/device_data.py).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
INPUT_CHANNELS = (1, 3)


class MetadataError(ValueError):
    """metadata.json is missing, malformed, or inconsistent with the model."""


@dataclass(frozen=True)
class Label:
    """One output class: `id` is the folder name (an ImageNet wnid, say), `name` what people read."""

    id: str
    name: str


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input (the paper's evaluation procedure).

    The shorter side is resized to `resize_size` (`interpolation`, antialiased), the central square of that
    size is cut out, and `crop_size` patches are taken from it: the centre one, or with `crops="ten"` the
    four corners and the centre plus their horizontal flips (`crops` is the scheme the model was trained
    for; clients may ask for the other). With `resize_size == crop_size` the network sees the whole resized
    image (the d2l book's Fashion-MNIST models). Pixels are scaled to [0, 1], or to [0, 255] with `pixel_range`
    "0-255" (Caffe's models); a model with `input_channels` 1 takes the luma of the RGB image (`LUMA_WEIGHTS`), one
    with 3 takes RGB, or BGR with `channel_order` "BGR"; each channel is normalised with `mean`/`std` (one value
    per input channel, in the network's channel order and pixel units; a mean-only model has std 1); the network
    takes NCHW float32. A value the reader does not know (an interpolation, a crop scheme, a channel order) fails
    the parse, so a model is refused at load rather than served differently from how it was trained. (Earlier
    stores also wrote `channel_order` "RGB", which this field reads back, and `layout` "NCHW", which said nothing
    the format does not fix; readers ignore it.)
    """

    resize_size: int = RESIZE_SIZE
    crop_size: int = CROP_SIZE
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: Interpolation = "bilinear"
    crops: CropScheme = "ten"
    input_channels: int = 3  # added after format 1's first stores: their metadata lacks it and means 3 (RGB)
    channel_order: ChannelOrder = "RGB"  # added with issue 19 (imported models), like pixel_range
    pixel_range: PixelRange = "0-1"


@dataclass(frozen=True)
class Features:
    """The network's penultimate layer, which the service can return beside the probabilities (issue 20: the paper's
    section 6.1, Fig. 4): `name` is the tensor in the ONNX graph (a graph output of the exports made here, else any
    value the graph computes), `dim` its width (float32 [N, dim]), `layer` what it is, in words (the paper's
    AlexNet: ``fc7 (after ReLU)``)."""

    name: str
    dim: int
    layer: str = ""


@dataclass(frozen=True)
class OnnxInfo:
    """The ONNX file of a version: its checksum (verified on load) and its I/O names. `output_kind` says whether the
    network's output is logits (the serving graph adds the softmax) or already probabilities (an imported graph that
    ends in its own softmax, such as the ONNX zoo's BVLC AlexNet: the serving graph adds none). `features` names the
    penultimate layer's tensor (`Features`); None for versions exported before issue 20, which serve no features."""

    file: str
    sha256: str
    opset: int
    input_name: str = "input"
    output_name: str = "logits"
    output_kind: OutputKind = "logits"
    bytes: int = 0
    features: Features | None = None  # added with issue 20


@dataclass(frozen=True)
class Source:
    """Where an imported version came from (`alexnet-import`, bench/importer.py); None for the networks trained
    here. `file` is the file's name (never its directory), `sha256` and `bytes` are the file's as it was given.
    A torchvision import names the builder (`arch`) and the weights enum its preprocessing and class names come
    from (`weights`, e.g. ``AlexNet_Weights.IMAGENET1K_V1``), with the ImageNet-1K accuracy torchvision reports for
    it (`top1`/`top5`, %, centre crop with its transforms); an ONNX import names the preset its preprocessing
    started from (`preset`), if any."""

    kind: SourceKind
    file: str
    sha256: str
    bytes: int
    arch: str | None = None
    weights: str | None = None
    top1: float | None = None
    top5: float | None = None
    preset: str | None = None


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime against PyTorch on real images, measured by the export that wrote the version: the network's
    logits on the ten crops (`reference` "pytorch"), or for an import the served probabilities (the service's
    patches through the serving graph) against `reference`: torchvision's forward on its own transforms, or the
    original ONNX graph on numpy preprocessing, ten crops and the centre crop. `features_max_*` are the same
    comparison for the features output (onnx.features) of an export that has one, checked against the same
    tolerance."""

    max_abs_diff: float
    max_rel_diff: float
    tolerance: float
    images: int
    reference: str = "pytorch"
    features_max_abs_diff: float | None = None  # issue 20: the features output (onnx.features), on the same crops
    features_max_rel_diff: float | None = None


@dataclass(frozen=True)
class ColourLighting:
    """The PCA colour augmentation a model was trained with (the paper's section 4.1): every training image's RGB
    pixels (in [0, 1]) get Σ_j eigvec[:, j] · α_j · eigval[j] added, α_j ~ N(0, `alpha_std`) drawn once per image,
    where eigval/eigvec are the eigenvalues (descending) and eigenvectors (column j of the rows R, G, B) of the
    3×3 covariance of RGB pixel values. `eigen` says where they come from: "computed" from the training set
    (`images` images, the paper's way), "imagenet" (fb.resnet.torch's ImageNet constants: on request, and what
    every run before this record used), or "none": no lighting (`alpha_std` 0, or 1-channel data, which has no
    colour). Training writes it to the checkpoint and reads it back on resume; the export copies it here."""

    eigen: LightingEigen
    alpha_std: float
    eigval: tuple[float, ...] = ()
    eigvec: tuple[tuple[float, ...], ...] = ()
    images: int | None = None


@dataclass(frozen=True)
class TrainingSummary:
    dataset: str
    epochs: int
    train_images: int
    val_images: int
    val_top1: float | None = None
    val_top5: float | None = None
    best_epoch: int | None = None
    lighting: ColourLighting | None = None  # added with issue 13; None: not recorded (earlier exports)


@dataclass(frozen=True)
class Architecture:
    """What the network is, for people and tools reading the store: `name` is the `--arch` it was built
    with (``alexnet-krizhevsky2012`` for the paper's network). `grouped` (conv2/4/5 in two groups) and `lrn`
    (its constants) describe the paper's AlexNet only: other networks leave them None and empty."""

    name: str
    num_classes: int
    parameters: int
    grouped: bool | None = None
    lrn: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: int
    created_at: str
    architecture: Architecture
    labels: tuple[Label, ...]
    preprocessing: Preprocessing
    onnx: OnnxInfo
    parity: Parity | None = None
    precision: Precision = "fp32"
    training: TrainingSummary | None = None
    source: dict[str, Any] = field(default_factory=dict)
    imported: Source | None = None  # added with issue 19: None for the networks trained here
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> ModelMetadata:
        meta = _build(cls, data, "metadata")
        if meta.format_version > FORMAT_VERSION:
            raise MetadataError(
                f"metadata format_version {meta.format_version} is newer than this code understands "
                f"({FORMAT_VERSION}); upgrade the service"
            )
        if meta.architecture.num_classes != len(meta.labels):
            raise MetadataError(
                f"metadata has {len(meta.labels)} labels but the architecture has "
                f"{meta.architecture.num_classes} classes"
            )
        pre = meta.preprocessing
        if pre.crop_size > pre.resize_size:
            raise MetadataError("preprocessing.crop_size is larger than preprocessing.resize_size")
        if pre.input_channels not in INPUT_CHANNELS:
            raise MetadataError(f"preprocessing.input_channels is {pre.input_channels}; expected 1 (luma) or 3 (RGB)")
        if not len(pre.mean) == len(pre.std) == pre.input_channels:
            raise MetadataError(
                f"preprocessing has {len(pre.mean)} mean and {len(pre.std)} std values for {pre.input_channels} "
                "input channel(s): give one of each per channel"
            )
        if min(pre.std) <= 0:
            raise MetadataError("preprocessing.std values must be positive")
        features = meta.onnx.features
        if features is not None and (features.dim < 1 or not features.name):
            raise MetadataError("onnx.features needs a tensor name and a dim of at least 1")
        if features is not None and features.name in (meta.onnx.input_name, meta.onnx.output_name):
            raise MetadataError(f"onnx.features.name {features.name!r} is the graph's input or classification output")
        if pre.channel_order == "BGR" and pre.input_channels != 3:
            raise MetadataError("preprocessing.channel_order BGR needs 3 input channels")
        lighting = meta.training.lighting if meta.training is not None else None
        if lighting is not None and lighting.eigen != "none" and (
                len(lighting.eigval) != 3 or len(lighting.eigvec) != 3 or any(len(r) != 3 for r in lighting.eigvec)):
            raise MetadataError("training.lighting needs 3 eigenvalues and a 3×3 eigenvector matrix")
        return meta

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"metadata.json is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _build(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against the type annotation `tp` and build dataclasses from dicts, recursively."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MetadataError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MetadataError(f"{where}: missing field '{f.name}'")
        return tp(**kwargs)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _build(arg, value, where)
            except MetadataError as exc:
                errors.append(str(exc))
        raise MetadataError("; ".join(errors))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise MetadataError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise MetadataError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise MetadataError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise MetadataError(f"{where}: expected an object, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MetadataError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise MetadataError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")  # a programming error, not bad data
