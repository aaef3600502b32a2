"""Static INT8 quantisation of an exported AlexNet: ONNX Runtime QDQ, per-channel weights, uint8 activations.

    alexnet-export --checkpoint ckpt.pt --name digits --quantize int8 [--calibration-dir DIR]   (training/export_cli.py)
    python -m training.quantize --model-store model_store --name digits [--version 1] [--calibration-dir DIR]

Both publish a *new* version whose metadata says ``precision: "int8"``; its ``source.quantization`` records
how it was made (the fp32 version or checkpoint it came from, the calibration images, the settings) and how
far it is from the fp32 network on real photographs (top-1 agreement, largest probability difference).
The service serves it unchanged: it takes the same float input, so the serving graph (uint8 patches →
normalise → network → softmax) wraps it as it wraps the fp32 one.

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
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image
from torch import nn

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
from training.export import (
    DEFAULT_OPSET,
    IMAGE_SUFFIXES,
    PARITY_TOLERANCE,
    check_labels,
    export_checked_onnx,
    load_images,
    parity_images,
    ten_crop_inputs,
)

DEFAULT_CALIBRATION_IMAGES = 64
CHECK_FROM_CALIBRATION = 16  # calibration images that also go into the int8-vs-fp32 check, beside the photos
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Kept in fp32 inside the quantised graph: the LRN's power (see the module docstring).
FP32_OP_TYPES = ("Sqrt", "Div")


class QuantizeError(RuntimeError):
    pass


# -- calibration images -----------------------------------------------------------------------------------
def training_folder(directory: Path) -> Path:
    """A dataset root's ``train/`` split, or `directory` itself when it has none."""
    return directory / "train" if (directory / "train").is_dir() else directory


def find_images(directory: Path, limit: int, seed: int = 0) -> list[Path]:
    """Up to `limit` images from `directory`, spread evenly over its class folders when it has them.

    Works on an ImageNet-layout split (``train/<class>/*``), a dataset root (its ``train/`` is used), or any
    folder of images. The choice is seeded, so the same folder always gives the same calibration set.
    """
    directory = training_folder(Path(directory))
    if not directory.is_dir():
        raise QuantizeError(f"calibration folder {directory} does not exist")
    groups: dict[Path, list[Path]] = {}
    for path in sorted(directory.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not any(
                part.startswith(".") for part in path.relative_to(directory).parts):
            groups.setdefault(path.parent, []).append(path)
    if not groups:
        raise QuantizeError(f"no images under {directory} (accepted: {', '.join(sorted(IMAGE_SUFFIXES))})")
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


def compare(fp32_path: Path, int8_path: Path, batches: Sequence[np.ndarray]) -> dict:
    """Ten-crop softmax averages of both models on real images: top-1 agreement and the largest difference."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    agree, worst = 0, 0.0
    for batch in batches:
        probs = []
        for session in sessions:
            (logits,) = session.run(None, {session.get_inputs()[0].name: batch})
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs.append((e / e.sum(axis=1, keepdims=True)).mean(axis=0))
        agree += int(np.argmax(probs[0]) == np.argmax(probs[1]))
        worst = max(worst, float(np.max(np.abs(probs[0] - probs[1]))))
    return {"images": len(batches), "top1_agreement": agree / max(len(batches), 1), "max_prob_diff": worst}


def publish_int8(store: ModelStore, name: str, fp32_path: Path, template: ModelMetadata, *,
                 calibration: Sequence[np.ndarray], calibration_source: str, check: Sequence[np.ndarray],
                 origin: dict, reduce_range: bool = False, method: str = "minmax",
                 log: Callable[[str], None] = print) -> ModelVersion:
    """Quantise `fp32_path` and publish it as a new version of `name`, metadata from `template` + int8 facts."""
    with store.new_version(name) as staging:
        out = staging.path / "model.onnx"
        settings = quantize_onnx(fp32_path, out, calibration, input_name=template.onnx.input_name,
                                 reduce_range=reduce_range, method=method, log=log)
        agreement = compare(fp32_path, out, check)
        log(f"int8 vs fp32 on {agreement['images']} images (ten crops): top-1 agreement "
            f"{100 * agreement['top1_agreement']:.0f} %, largest probability difference "
            f"{agreement['max_prob_diff']:.3g}")
        model = onnx.load(str(out), load_external_data=False)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), template.onnx.opset)
        onnx_info = OnnxInfo(file=out.name, sha256=sha256_of(out), opset=opset, input_name=template.onnx.input_name,
                             output_name=template.onnx.output_name, bytes=out.stat().st_size)
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        quantization = {**settings, "from": origin,
                        "calibration": {"images": len(calibration), "crops_per_image": int(calibration[0].shape[0]),
                                        "source": calibration_source},
                        "check_vs_fp32": agreement}
        return staging.commit(lambda version: ModelMetadata(
            name=name, version=version, created_at=created, architecture=template.architecture,
            labels=template.labels, preprocessing=template.preprocessing, onnx=onnx_info, parity=None,
            precision="int8", training=template.training,
            source={**template.source, "quantization": quantization},
        ))


def calibration_set(directory: Path | None, pre: Preprocessing, limit: int = DEFAULT_CALIBRATION_IMAGES,
                    log: Callable[[str], None] = print) -> tuple[list[np.ndarray], str]:
    if directory is not None:
        directory = training_folder(directory)  # so the log and the metadata name the folder used
        paths = find_images(directory, limit)
        log(f"calibrating on {len(paths)} images from {directory}")
        return ten_crop_batches(load_images(paths), pre), str(Path(directory).resolve())
    log("warning: no calibration folder given or known; calibrating on the two photographs shipped with "
        "scikit-learn (pass --calibration-dir with training images for a better int8 model)")
    return ten_crop_batches(parity_images(None), pre), "scikit-learn sample photographs"


def quantize_store_version(store: ModelStore, source: ModelVersion, *, name: str | None = None,
                           calibration_dir: Path | None = None, calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                           reduce_range: bool = False, method: str = "minmax",
                           log: Callable[[str], None] = print) -> ModelVersion:
    """An fp32 version already in the store → a new int8 version (of the same name unless `name` is given)."""
    if source.metadata.precision != "fp32":
        raise QuantizeError(f"{source.path} is already {source.metadata.precision}; quantise an fp32 version")
    source.verify()
    pre = source.metadata.preprocessing
    calibration, where = calibration_set(calibration_dir, pre, calibration_images, log)
    check = ten_crop_batches(parity_images(None), pre) + calibration[:CHECK_FROM_CALIBRATION]
    origin = {"name": source.name, "version": source.version, "sha256": source.metadata.onnx.sha256}
    return publish_int8(store, name or source.name, source.onnx_path, source.metadata, calibration=calibration,
                        calibration_source=where, check=check, origin=origin, reduce_range=reduce_range,
                        method=method, log=log)


def export_int8(model: nn.Module, store: ModelStore, name: str, labels: Sequence[Label], preprocessing: Preprocessing,
                *, training: TrainingSummary | None = None, source: dict | None = None, opset: int = DEFAULT_OPSET,
                images: Sequence[Image.Image] | None = None, tolerance: float = PARITY_TOLERANCE,
                calibration_dir: Path | None = None, calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                reduce_range: bool = False, method: str = "minmax",
                log: Callable[[str], None] = print) -> ModelVersion:
    """`alexnet-export --quantize int8`: a PyTorch model → parity-checked fp32 ONNX → a new int8 version."""
    check_labels(model, labels)
    with tempfile.TemporaryDirectory(prefix="alexnet-export-") as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        checked = export_checked_onnx(model, fp32_path, labels, preprocessing, source=source, opset=opset,
                                      images=images, tolerance=tolerance, log=log)
        calibration, where = calibration_set(calibration_dir, preprocessing, calibration_images, log)
        template = ModelMetadata(
            name=name, version=1, created_at="", architecture=checked.architecture, labels=tuple(labels),
            preprocessing=preprocessing, onnx=checked.onnx, training=training, source=checked.source)
        origin = {"fp32_parity": {"max_rel_diff": checked.parity.max_rel_diff, "tolerance": tolerance,
                                  "images": len(checked.images)},
                  "fp32_sha256": checked.onnx.sha256}
        check = ten_crop_batches(checked.images, preprocessing) + calibration[:CHECK_FROM_CALIBRATION]
        return publish_int8(store, name, fp32_path, template, calibration=calibration, calibration_source=where,
                            check=check, origin=origin, reduce_range=reduce_range, method=method, log=log)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.quantize",
        description="Quantise an fp32 version of the model store to INT8 (ONNX Runtime static QDQ, per-channel "
                    "int8 weights, uint8 activations) and publish it as a new version with precision int8. "
                    "The new version's path is printed on the last line.")
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="store root (default: %(default)s)")
    p.add_argument("--name", help="model to quantise (default: the only model in the store)")
    p.add_argument("--version", type=int, help="fp32 version to quantise (default: the newest fp32 version)")
    p.add_argument("--output-name", help="publish under this name instead (default: the same name)")
    add_calibration_arguments(p)
    return p


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration-dir", type=Path,
                   help="training images for calibration: an ImageNet-layout dataset or train/ folder, or any image "
                        "folder (default: the checkpoint's training set when it is still there, else two sample "
                        "photographs)")
    p.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                   help="images to calibrate on, spread over the classes (default: %(default)s; ten crops each)")
    p.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax",
                   help="activation ranges from min/max, a percentile or entropy (default: %(default)s)")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: avoids int16 saturation in u8s8 kernels on CPUs without VNNI, at some "
                        "accuracy cost (default: off)")


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
            calibration_images=args.calibration_images, reduce_range=args.reduce_range,
            method=args.calibration_method, log=lambda m: print(m, file=sys.stderr))
    except (QuantizeError, StoreError) as exc:
        print(f"quantize: error: {exc}", file=sys.stderr)
        return 2
    print(version.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
