"""Fashion-MNIST read straight from its IDX files: the standard split, gz and plain files alike, clear errors for
broken files, and the PNG folders written for alexnet-eval."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import train
from training.fashion_mnist import CLASS_IDS, DEFAULT_ROOT, IdxError, load, parse_spec, write_folder
from training.fashion_mnist import main as fashion_mnist_cli


def test_the_standard_split(fashion_mnist) -> None:
    train_split, test_split = fashion_mnist.train, fashion_mnist.test
    assert train_split.images.shape == (60_000, 28, 28) and test_split.images.shape == (10_000, 28, 28)
    assert train_split.images.dtype == np.uint8 and train_split.labels.dtype == np.int64
    assert np.bincount(train_split.labels).tolist() == [6000] * 10  # balanced classes
    assert np.bincount(test_split.labels).tolist() == [1000] * 10
    # Facts of the published data set: its first labels (ankle boot, T-shirt, T-shirt, dress) and the pixel
    # statistics every Fashion-MNIST tutorial normalises with (mean 0.2860, std 0.3530).
    assert train_split.labels[:4].tolist() == [9, 0, 0, 3] and test_split.labels[:3].tolist() == [9, 2, 1]
    pixels = train_split.images / 255.0
    assert pixels.mean() == pytest.approx(0.2860, abs=1e-4) and pixels.std() == pytest.approx(0.3530, abs=1e-4)
    assert fashion_mnist.names[0] == "T-shirt/top" and fashion_mnist.classes[9] == "ankle_boot"


def test_plain_and_gzipped_files_read_the_same(fashion_mnist_root: Path, fashion_mnist, tmp_path: Path) -> None:
    for path in fashion_mnist_root.glob("*.gz"):
        (tmp_path / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
    plain = load(tmp_path)
    assert np.array_equal(plain.train.images, fashion_mnist.train.images)
    assert np.array_equal(plain.test.labels, fashion_mnist.test.labels)


def test_data_specs() -> None:
    assert parse_spec("fashion-mnist") == DEFAULT_ROOT == Path("/usr/share/datasets/fashion-mnist")
    assert parse_spec("fashion-mnist:") == DEFAULT_ROOT
    assert parse_spec("fashion-mnist:/data/fm") == Path("/data/fm")
    assert parse_spec("/data/imagenet") is None and parse_spec("fashion-mnistx") is None


def _copy(root: Path, tmp: Path) -> Path:
    out = tmp / "fm"
    shutil.copytree(root, out)
    return out


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink(),
     "has no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"),
    (lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(gzip.decompress((d / "t10k-images-idx3-ubyte.gz").read_bytes())[:-100])),
     "truncated or corrupt"),
    (lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all"), "cannot read"),
    (lambda d: shutil.copyfile(d / "t10k-labels-idx1-ubyte.gz", d / "t10k-images-idx3-ubyte.gz"), "magic number"),
])
def test_broken_files_are_clear_errors(fashion_mnist_root: Path, tmp_path: Path, damage, message: str) -> None:
    root = _copy(fashion_mnist_root, tmp_path)
    damage(root)
    with pytest.raises(IdxError, match=message):
        load(root)


def test_alexnet_train_reports_a_missing_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(["--data", f"fashion-mnist:{tmp_path / 'nowhere'}", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "dataset-fashion-mnist" in err[0]


def test_png_folders_for_alexnet_eval(fashion_mnist, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "test"
    indices = [0, 1, 2, 5000, 9999]
    assert write_folder(fashion_mnist.test, out, indices, progress=False) == 5
    assert sorted(p.name for p in out.iterdir()) == sorted(CLASS_IDS)  # every class folder, even empty ones
    for i in indices:
        path = out / CLASS_IDS[fashion_mnist.test.labels[i]] / f"{i:05d}.png"
        with Image.open(path) as img:
            assert img.mode == "L" and np.array_equal(np.asarray(img), fashion_mnist.test.images[i])  # lossless
    with pytest.raises(IdxError, match="already exists"):  # never written over
        write_folder(fashion_mnist.test, out, indices, progress=False)
    assert not list(tmp_path.glob(".*staging*"))
    # The command: a class-balanced subset.
    assert fashion_mnist_cli(["--split", "train", "--subset", "20", str(tmp_path / "sub")]) == 0
    counts = [len(list((tmp_path / "sub" / c).iterdir())) for c in CLASS_IDS]
    assert counts == [2] * 10
    assert fashion_mnist_cli([str(tmp_path / "sub")]) == 2 and "already exists" in capsys.readouterr().err
