"""alexnet-demo: the offline digits dataset, --if-empty, and a (tiny) end-to-end run into the model store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_store import ModelStore
from training import demo
from training.data import DatasetError, open_folders


def test_digits_dataset_layout_split_and_reuse(tmp_path: Path) -> None:
    root = tmp_path / "digits"
    counts = demo.build_digits_dataset(root, limit=100, progress=False)
    assert counts == {"train": 80, "val": 20}
    folders = open_folders(root)  # the ImageNet layout that alexnet-train reads
    assert folders.classes == [str(d) for d in range(10)]
    assert len(folders.train) == 80 and len(folders.val) == 20
    per_class = Counter(folders.val.targets)
    assert set(per_class) == set(range(10)) and max(per_class.values()) - min(per_class.values()) <= 1  # stratified
    train_files = {Path(p).name for p, _ in folders.train.samples}
    val_files = {Path(p).name for p, _ in folders.val.samples}
    assert not train_files & val_files  # disjoint

    path, _target = folders.train.samples[0]
    img = Image.open(path)
    assert img.size == (256, 256) and img.mode == "L"
    pixels = np.asarray(img)
    assert pixels[:32].max() == 0 and pixels[:, :32].max() == 0  # a black margin: any 224 crop holds the digit
    assert pixels.max() > 128  # ... and the digit is there

    # Same settings: reused as is; other settings: refused rather than mixed.
    mtime = Path(path).stat().st_mtime_ns
    assert demo.build_digits_dataset(root, limit=100, progress=False) == counts
    assert Path(path).stat().st_mtime_ns == mtime
    with pytest.raises(DatasetError, match="other settings"):
        demo.build_digits_dataset(root, limit=50, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a digits dataset"):
        demo.build_digits_dataset(tmp_path / "other", progress=False)
    assert not list(tmp_path.glob(".*staging*"))


def test_if_empty_does_nothing_when_the_store_has_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "store" / "someone" / "1").mkdir(parents=True)
    (tmp_path / "store" / "someone" / "1" / "metadata.json").write_text("{}")
    assert demo.main(["--model-store", str(tmp_path / "store"), "--data", str(tmp_path / "data"), "--if-empty"]) == 0
    assert "already holds someone; nothing to do" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()  # did not even build the dataset


def test_tiny_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole demo path on 50 digits and one epoch: dataset → alexnet-train's loop → parity-checked export."""
    store = tmp_path / "store"
    argv = ["--model-store", str(store), "--data", str(tmp_path / "digits"), "--limit", "50", "--epochs", "1",
            "--batch-size", "20", "--workers", "0", "--no-progress", "--if-empty"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "validation top-1" in out and "on 10 held-out digits" in out
    version = ModelStore(store).resolve("digits")
    assert out.strip().splitlines()[-1] == str(version.path)
    meta = version.metadata
    assert meta.version == 1 and [lab.id for lab in meta.labels] == [str(d) for d in range(10)]
    assert meta.parity is not None and meta.parity.max_rel_diff <= 1e-4 and meta.parity.images == 4
    assert meta.training is not None and meta.training.dataset == "digits" and meta.training.epochs == 1
    assert meta.training.train_images == 40 and meta.training.val_images == 10
    assert meta.training.val_top1 is not None and meta.training.val_top5 is not None
    assert meta.preprocessing.crops == "ten"  # trained with the paper's reflections, so its ten crops apply
    assert meta.preprocessing.mean != (0.485, 0.456, 0.406)  # computed from the digits
    assert meta.architecture.grouped and meta.source["dataset"] == "sklearn.datasets.load_digits"
    version.verify()
    # The store now holds a model: --if-empty is a no-op.
    assert demo.main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert ModelStore(store).versions("digits") == [1]
