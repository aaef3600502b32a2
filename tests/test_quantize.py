"""INT8: a quantised version is published beside the fp32 one, says so in its metadata, loads into the service's
model, and predicts what the fp32 network predicts on real photographs; one that does not is refused (the gate)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from alexnet_store import ModelStore, Preprocessing
from training import quantize
from training.export import parity_images


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory: pytest.TempPathFactory, project_photos: list[Path]) -> Path:
    """A small ImageNet-layout data set of real photographs: train/ holds regions of scikit-learn's two sample
    photos (the calibration images), val/ the 24 project photos (the held-out images of the gate)."""
    root = tmp_path_factory.mktemp("calib") / "train"
    for k, photo in enumerate(parity_images(None)):
        w, h = photo.size
        for i, box in enumerate([(0, 0, w // 2, h // 2), (w // 2, h // 2, w, h), (w // 4, 0, w, h)]):
            (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
            photo.crop(box).save(root / f"class_{k}" / f"{i}.jpg", quality=92)
    for i, path in enumerate(project_photos):
        (root.parent / "val" / f"class_{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root.parent / "val" / f"class_{i % 2}" / path.name)
    return root.parent


@pytest.fixture(scope="module")
def int8_store(exported, calibration_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The session's fp32 test model copied into a fresh store, then quantised there by the CLI."""
    _root, fp32, _model = exported
    store_root = tmp_path_factory.mktemp("int8store")
    shutil.copytree(fp32.path, store_root / fp32.name / "1")
    code = quantize.main(["--model-store", str(store_root), "--name", fp32.name, "--calibration-dir",
                          str(calibration_dir), "--calibration-images", "6", "--check-images", "12"])
    assert code == 0
    return ModelStore(store_root)


def test_find_images_spreads_over_classes_and_uses_train(tmp_path: Path) -> None:
    for cls, n in [("a", 5), ("b", 1), ("c", 3)]:
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4)).save(tmp_path / "train" / cls / f"{i}.png")
    (tmp_path / "train" / ".hidden").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / ".hidden" / "x.png")
    picked = quantize.find_images(tmp_path, limit=4)
    assert len(picked) == 4
    assert {p.parent.name for p in picked[:3]} == {"a", "b", "c"}  # one per class before any class twice
    assert quantize.find_images(tmp_path, limit=4) == picked  # deterministic
    with pytest.raises(quantize.QuantizeError):
        quantize.find_images(tmp_path / "nope", limit=4)


def test_default_calibration_set_is_the_checkpoints_training_folder(tmp_path: Path) -> None:
    import torch

    (tmp_path / "data" / "train").mkdir(parents=True)
    torch.save({"args": {"data": str(tmp_path / "data")}}, tmp_path / "ckpt.pt")
    assert quantize.default_calibration_dir(torch.load(tmp_path / "ckpt.pt")) == tmp_path / "data" / "train"
    torch.save({"args": {"data": str(tmp_path / "gone")}}, tmp_path / "old.pt")
    assert quantize.default_calibration_dir(torch.load(tmp_path / "old.pt")) is None
    assert quantize.default_calibration_dir(None) is None


def test_splitting_grouped_convs_keeps_the_function(exported) -> None:
    import onnxruntime as ort

    _root, fp32, _model = exported
    model = onnx.load(str(fp32.onnx_path))
    before = model.SerializeToString()
    assert quantize.split_grouped_convs(model) == 3
    onnx.checker.check_model(model)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    (want,), (got,) = (ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})
                       for m in (before, model.SerializeToString()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_only_the_lrn_power_stays_fp32(exported) -> None:
    _root, fp32, _model = exported
    model = onnx.load(str(fp32.onnx_path))
    kept = {n.name: n.op_type for n in model.graph.node if n.name in set(quantize.fp32_nodes(model))}
    assert sorted(kept.values()) == ["Div", "Div", "Mul", "Mul", "Sqrt", "Sqrt", "Sqrt", "Sqrt"]


@pytest.mark.slow
def test_int8_is_a_new_version_with_precision_int8(exported, int8_store: ModelStore) -> None:
    _root, fp32, _model = exported
    assert int8_store.versions(fp32.name) == [1, 2]
    assert int8_store.resolve(fp32.name, 1).metadata.precision == "fp32"  # the fp32 version is untouched
    int8 = int8_store.resolve(fp32.name, 2)
    int8.verify()
    meta = int8.metadata
    assert meta.precision == "int8" and meta.parity is None
    assert meta.labels == fp32.metadata.labels and meta.preprocessing == fp32.metadata.preprocessing
    q = meta.source["quantization"]
    assert q["from"] == {"name": fp32.name, "version": 1, "sha256": fp32.metadata.onnx.sha256}
    assert q["calibration"]["images"] == 6 and q["calibration"]["crops_per_image"] == 10
    assert q["activations"].startswith("uint8") and "per channel" in q["weights"]
    assert q["grouped_convs_split"] == 3  # conv2, conv4, conv5: one int8 Conv per group (VNNI kernel)
    check = q["check_vs_fp32"]  # on held-out images: the data set's val/ split, none of them a calibration image
    assert check["held_out"] and check["source"] == "val split" and check["folder"].endswith("/val")
    assert check["images"] == len(check["files"]) == 12 and check["crops_per_image"] == 10
    assert {name.split("/")[0] for name in check["files"]} == {"class_0", "class_1"}  # relative, spread over classes
    assert not any(name.startswith("/") or ".." in name for name in check["files"])
    assert check["top1_agreement"] >= 0.99 and check["disagreements"] == []
    assert q["gate"] == {"min_agreement": 0.99, "passed": True, "forced": False}
    graph = onnx.load(str(int8.onnx_path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Split", "Concat"} <= ops
    assert all(a.i == 1 for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group")
    assert json.loads((int8.path / "metadata.json").read_text())["precision"] == "int8"
    assert int8.onnx_path.stat().st_size < fp32.onnx_path.stat().st_size / 3  # int8 weights


@pytest.mark.slow
def test_int8_serves_and_agrees_with_fp32_on_real_photos(exported, int8_store: ModelStore,
                                                         project_photos: list[Path]) -> None:
    from support.app import classify

    from service.model import ClassifierModel

    _root, fp32, _model = exported
    models = {}
    for v in (1, 2):
        models[v] = ClassifierModel(int8_store.resolve(fp32.name, v), providers=["CPUExecutionProvider"])
        models[v].load(warmup_batch=1)
    photos = [p.read_bytes() for p in project_photos[:20]]
    probs = {v: np.stack([image.schemes["ten"].probabilities for image in classify(m, photos, top_k=1).images])
             for v, m in models.items()}
    assert np.abs(probs[1] - probs[2]).max() < 0.05
    # The test network (random weights) gives most photos the same top-1, so agreement is judged on the whole
    # ranking of the 10 classes, which does differ from photo to photo: int8 must reproduce it.
    ranks = {v: np.argsort(np.argsort(-p, axis=1, kind="stable"), axis=1) for v, p in probs.items()}
    assert len({tuple(r) for r in ranks[1]}) >= 5  # the rankings really vary between photos (9 of 20 here)
    spearman = [np.corrcoef(a, b)[0, 1] for a, b in zip(ranks[1], ranks[2], strict=True)]
    assert np.mean(spearman) >= 0.95, spearman  # measured: 0.998
    top3 = np.mean([list(np.argsort(-a)[:3]) == list(np.argsort(-b)[:3]) for a, b in zip(probs[1], probs[2],
                                                                                          strict=True)])
    assert top3 >= 0.8, top3  # measured: 0.95


# -- the gate ------------------------------------------------------------------------------------------------------
def test_held_out_images_are_never_calibration_images(calibration_dir: Path, tmp_path: Path) -> None:
    calibration = quantize.calibration_set(calibration_dir, Preprocessing(), 4, log=lambda _m: None)[2]
    assert calibration.folder == calibration_dir / "train" and len(calibration.paths) == 4
    held = quantize.held_out_set(None, calibration, 5, log=lambda _m: None)  # the val/ beside train/
    assert held is not None and held.kind == "val split" and held.folder == calibration_dir / "val"
    assert len(held.paths) == 5 and all(n.startswith("class_") for n in held.names())
    # --check-dir on the calibration folder itself: only the images calibration did not use
    same = quantize.held_out_set(calibration_dir / "train", calibration, 100, log=lambda _m: None)
    assert same is not None and len(same.paths) == 6 - 4 and not set(same.paths) & set(calibration.paths)
    # Calibrated on the sample photographs and no other folder known: nothing is held out; refused unless --force.
    photos = quantize.calibration_set(None, Preprocessing(), 4, log=lambda _m: None)[2]
    assert quantize.held_out_set(None, photos, 5, log=lambda _m: None) is None
    with pytest.raises(quantize.QuantizeError, match=r"no held-out images.*--check-dir"):
        quantize._check_or_refuse(None, photos, 5, False, lambda _m: None)
    images, held_out = quantize._check_or_refuse(None, photos, 5, True, lambda _m: None)
    assert not held_out and images.names() == ["china.jpg", "flower.jpg"]
    with pytest.raises(quantize.QuantizeError, match="does not exist"):
        quantize.held_out_set(tmp_path / "nope", calibration, 5, log=lambda _m: None)


def test_gate_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--min-agreement", "1.5"], ["--min-agreement", "x"], ["--check-images", "0"]):
        with pytest.raises(SystemExit) as exc:
            quantize.build_parser().parse_args(bad)
        assert exc.value.code == 2
        assert "expected" in capsys.readouterr().err


@pytest.fixture(scope="module")
def prototype_checkpoint(exported, project_photos: list[Path], tmp_path_factory: pytest.TempPathFactory):
    """A real network whose top-1 varies from photo to photo, as a checkpoint `alexnet-export` reads: the session's
    test AlexNet with fc8 replaced by a nearest-prototype classifier over its fc7 features (class c = the direction
    of photo 2c's centred features). Random weights alone give most photos the same class, which an int8 model can
    match without being right anywhere else. Written in the training checkpoint format (training/checkpoint.py)."""
    import dataclasses

    import torch

    from training.checkpoint import save_checkpoint
    from training.export import load_images, ten_crop_inputs

    _root, fp32, reference = exported
    model = copy.deepcopy(reference).eval()
    crops = ten_crop_inputs(load_images(project_photos), Preprocessing())
    with torch.inference_mode():
        features = model.classifier[:-1](torch.flatten(model.features(torch.stack([c[4] for c in crops])), 1))
        centre = features.mean(dim=0)
        prototypes = features[::2][:10] - centre
        weight = prototypes / prototypes.norm(dim=1, keepdim=True)
        model.classifier[-1].weight.copy_(weight)
        model.classifier[-1].bias.copy_(-(weight @ centre))
        top1 = (features @ weight.T - weight @ centre).argmax(dim=1).tolist()  # centre crops
    assert top1[::2][:10] == list(range(10)), top1  # each prototype photo is nearest its own class: 10 classes
    path = tmp_path_factory.mktemp("proto") / "proto.pt"
    pre = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(Preprocessing()).items()}
    save_checkpoint(path, {"model_config": {"arch": "alexnet", "num_classes": 10, "grouped": True, "dropout": 0.5},
                           "model_state": model.state_dict(), "preprocessing": pre,
                           "labels": [[lab.id, lab.name] for lab in fp32.metadata.labels]})
    return path, model


@pytest.mark.slow
def test_gate_refuses_a_broken_calibration_and_force_publishes_it(prototype_checkpoint, project_photos: list[Path],
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`alexnet-export --quantize int8` end to end: calibrated on an all-black image, the int8 model disagrees with
    fp32 on held-out photos; the export refuses (one line, exit 2, nothing in the store), and `--force` publishes it
    with the record of what the check found."""
    import onnxruntime as ort
    import torch

    from training.export import load_images, ten_crop_inputs
    from training.export_cli import main

    checkpoint, model = prototype_checkpoint
    black = tmp_path / "black" / "train" / "x"  # calibration images that are all black: every range is wrong
    black.mkdir(parents=True)
    Image.new("RGB", (256, 256)).save(black / "0.png")
    root = tmp_path / "store"
    root.mkdir()
    argv = ["--model-store", str(root), "--name", "proto", "--checkpoint", str(checkpoint), "--quantize", "int8",
            "--calibration-dir", str(black.parent.parent), "--calibration-images", "1",
            "--check-dir", str(project_photos[0].parent), "--check-images", "8"]

    assert main(argv) == 2
    captured = capsys.readouterr()
    assert str(root) not in captured.out  # no version path printed
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("alexnet-export: error: int8 top-1 agrees with fp32 on ") and "held-out" in error
    assert "below --min-agreement 0.99; nothing was published (--force publishes it anyway)" in error
    assert list(root.iterdir()) == []  # nothing written: no version, no staging folder, no model folder

    assert main([*argv, "--force"]) == 0
    version = ModelStore(root).resolve("proto")
    assert version.version == 1 and version.metadata.precision == "int8"
    q = version.metadata.source["quantization"]
    assert q["from"]["fp32_parity"]["max_rel_diff"] < 1e-4  # the fp32 export it came from passed its parity check
    assert q["gate"] == {"min_agreement": 0.99, "passed": False, "forced": True}
    check = q["check_vs_fp32"]
    assert check["held_out"] and check["source"] == "check folder" and len(check["files"]) == check["images"] == 8
    assert check["top1_agreement"] < 0.99 and check["disagreements"]
    assert set(check["disagreements"]) <= set(check["files"]) <= {p.name for p in project_photos}
    # Independently: on every image the record names, PyTorch's fp32 model and the published int8 file differ.
    session = ort.InferenceSession(str(version.onnx_path), providers=["CPUExecutionProvider"])
    folder = project_photos[0].parent
    for crops in ten_crop_inputs(load_images([folder / n for n in check["disagreements"]]), Preprocessing()):
        with torch.inference_mode():
            want = int(model(crops).softmax(dim=1).mean(dim=0).argmax())
        (logits,) = session.run(["logits"], {"input": crops.numpy()})
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        assert int(np.argmax((e / e.sum(axis=1, keepdims=True)).mean(axis=0))) != want
