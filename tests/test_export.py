"""alexnet-export: new versions only, parity recorded and enforced, labels from a TSV or a plain list, the crop
scheme and lighting the training used recorded (and the service following the crop scheme)."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import pytest

from alexnet_store import ModelStore
from training import export_cli, train

WNIDS = [f"n0{i:07d}" for i in range(10)]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def checkpoint(tiny_run: Path) -> Path:
    """The checkpoint of a real (tiny) training run: full AlexNet, 4 real digits, one step (conftest.py
    `tiny_run`, the session's one; export only reads it)."""
    return tiny_run / "last.pt"


def _tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _export(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = export_cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_versions_parity_labels_and_no_overwrite(checkpoint: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    tsv = tmp_path / "classes.tsv"
    tsv.write_text("index\twnid\tname\n" + "".join(f"{i}\t{w}\t{n}\n" for i, (w, n) in enumerate(zip(
        WNIDS, NAMES, strict=True))))
    plain = tmp_path / "names.txt"
    plain.write_text("\n".join(n.upper() for n in NAMES) + "\n")

    # 1: an untrained network, its classes and names from a TSV (like imagenet_classes.tsv).
    rc, out, err = _export(["--model-store", str(root), "--name", "net", "--random-init", "--labels", str(tsv),
                            "--init", "kaiming"], capsys)
    assert rc == 0, err
    v1 = Path(out.strip().splitlines()[-1])
    assert v1 == root / "net" / "1" and (v1 / "model.onnx").is_file()
    assert "max rel diff" in err
    meta1 = ModelStore(root).resolve("net", 1).metadata
    assert [(lab.id, lab.name) for lab in meta1.labels] == list(zip(WNIDS, NAMES, strict=True))
    assert meta1.parity is not None and meta1.parity.max_rel_diff <= 1e-4 and meta1.parity.tolerance == 1e-4
    assert meta1.parity.images == 2 and meta1.training is None and meta1.source["random_init"] is True
    ModelStore(root).resolve("net", 1).verify()  # sha256 in the metadata matches the file
    before = _tree_digest(v1)

    # 2: a trained checkpoint, names from a plain list (ids stay the training folder names).
    rc, out, err = _export(["--model-store", str(root), "--name", "net", "--checkpoint", str(checkpoint),
                            "--labels", str(plain)], capsys)
    assert rc == 0, err
    v2 = Path(out.strip().splitlines()[-1])
    assert v2 == root / "net" / "2"
    meta2 = ModelStore(root).resolve("net").metadata
    assert meta2.version == 2
    assert [(lab.id, lab.name) for lab in meta2.labels] == [(str(d), n.upper()) for d, n in enumerate(NAMES)]
    assert meta2.parity is not None and meta2.parity.max_rel_diff <= 1e-4
    assert meta2.training is not None and meta2.training.dataset == "digits" and meta2.training.epochs == 1
    assert meta2.training.train_images == 4 and meta2.training.val_images == 10
    assert meta2.training.val_top1 is not None and 0 <= meta2.training.val_top1 <= meta2.training.val_top5 <= 1
    assert meta2.architecture.grouped and meta2.architecture.parameters == 56_909_194
    assert meta2.source["checkpoint"] == str(checkpoint.resolve())
    pre2 = meta2.preprocessing  # trained with reflections: the paper's ten crops; resized as training resized
    assert (pre2.crops, pre2.interpolation, pre2.resize_size, pre2.crop_size) == ("ten", "bilinear", 256, 224)
    lighting = meta2.training.lighting  # the PCA lighting of the run, from the checkpoint
    assert lighting is not None and lighting.eigen == "computed" and lighting.alpha_std == 0.1
    assert lighting.images == 40 and len(lighting.eigval) == 3 and len(lighting.eigvec) == 3
    assert _tree_digest(v1) == before  # version 1 untouched, byte for byte

    # A failed parity check (tolerance 0: ONNX Runtime and PyTorch never agree to the last bit) writes nothing.
    rc, out, err = _export(["--model-store", str(root), "--name", "net", "--random-init", "--num-classes", "3",
                            "--init", "kaiming", "--parity-tolerance", "0"], capsys)
    assert rc == 2 and "parity check failed" in err and "nothing was written" in err
    assert str(root) not in out  # no version path printed
    assert ModelStore(root).versions("net") == [1, 2]
    assert sorted(p.name for p in (root / "net").iterdir() if p.name != ".lock") == ["1", "2"]  # no staging left
    assert _tree_digest(v1) == before


def test_input_errors(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    rc, _, err = _export(["--model-store", str(root), "--name", "x", "--random-init"], capsys)
    assert rc == 2 and "--num-classes" in err
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("a\nb\n")
    rc, _, err = _export(["--model-store", str(root), "--name", "x", "--checkpoint", str(checkpoint),
                          "--labels", str(wrong)], capsys)
    assert rc == 2 and "does not name the classes" in err
    rc, _, err = _export(["--model-store", str(root), "--name", "x", "--checkpoint", str(tmp_path / "none.pt")], capsys)
    assert rc == 2 and "does not exist" in err
    rc, _, err = _export(["--model-store", str(root), "--name", "bad/name", "--random-init", "--num-classes", "2"],
                         capsys)
    assert rc == 2 and "invalid model name" in err
    assert not root.exists() or ModelStore(root).is_empty()


def test_help_documents_the_interface(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        export_cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model-store", "--name", "--checkpoint", "--random-init", "--num-classes", "--labels",
                 "--no-grouping", "--init", "--seed", "--opset", "--parity-images", "--parity-tolerance"):
        assert flag in text, flag
    for words in ("never overwritten", "TSV", "one name per line", "parity"):
        assert words in text, words


@pytest.fixture(scope="module")
def no_flip_run(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real (tiny) training run without horizontal reflections (on the session's digits, conftest.py): (its
    checkpoint, its data set)."""
    tmp = tmp_path_factory.mktemp("no-flip-run")
    data = digits
    assert train.main(["--data", str(data), "--output", str(tmp / "run"), "--epochs", "1", "--limit-train", "4",
                       "--batch-size", "4", "--init", "kaiming", "--lr", "0.001", "--workers", "0", "--no-flip",
                       "--no-progress"]) == 0
    return tmp / "run" / "last.pt", data


@pytest.mark.slow
def test_a_model_trained_without_reflections_is_served_with_the_centre_crop(
        no_flip_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ten-crop averages half mirror images that such a model never saw (the no-reflection digits demo: 90.3 %
    instead of 97.2 %), so its export says `crops: "center"` and the service answers with the centre crop when the
    request names no scheme: the probabilities of PyTorch's model on the single centre patch."""
    import numpy as np
    import torch
    from PIL import Image
    from support.settings import cpu_settings

    from service.app import create_app
    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.presets import center_transform

    with warnings.catch_warnings():  # starlette asks for httpx2 in the test client; httpx is what is installed
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    checkpoint, data = no_flip_run
    root = tmp_path / "store"
    rc, _out, err = _export(["--model-store", str(root), "--name", "noflip", "--checkpoint", str(checkpoint)], capsys)
    assert rc == 0, err
    version = ModelStore(root).resolve("noflip")
    pre = version.metadata.preprocessing
    assert (pre.crops, pre.interpolation) == ("center", "bilinear")
    assert json.loads((version.path / "metadata.json").read_text())["preprocessing"]["crops"] == "center"

    photo = sorted((data / "val").rglob("*.png"))[0]
    settings = cpu_settings(root)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health/ready").json()
            time.sleep(0.05)
        r = client.post("/predict", params={"top_k": 10}, files=[("files", (photo.name, photo.read_bytes(),
                                                                              "image/png"))])
    assert r.status_code == 200, r.text
    assert r.json()["crops"] == "center"  # the model's scheme; the request named none
    got = np.full(10, np.nan)
    for p in r.json()["results"][0]["predictions"]:
        got[p["index"]] = p["probability"]
    model = model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    with Image.open(photo) as img, torch.inference_mode():
        x = center_transform(pre.mean, pre.std, pre.resize_size, pre.crop_size)(img.convert("RGB"))[None]
        want = torch.softmax(model(x), dim=-1)[0].numpy()
    assert np.abs(got - want).max() < 1e-4, (got, want)
