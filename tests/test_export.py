"""alexnet-export: new versions only, parity recorded and enforced, labels from a TSV or a plain list."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from alexnet_store import ModelStore
from training import export_cli, train
from training.demo import build_digits_dataset

WNIDS = [f"n0{i:07d}" for i in range(10)]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of a real (tiny) training run: full AlexNet, 4 real digits, one step."""
    tmp = tmp_path_factory.mktemp("export-run")
    data = tmp / "digits"
    build_digits_dataset(data, limit=50, progress=False)
    assert train.main(["--data", str(data), "--output", str(tmp / "run"), "--epochs", "1", "--limit-train", "4",
                       "--batch-size", "4", "--init", "kaiming", "--lr", "0.001", "--workers", "0",
                       "--no-progress"]) == 0
    return tmp / "run" / "last.pt"


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
