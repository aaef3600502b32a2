"""alexnet-train: the paper's recipe defaults, exact resume, DDP with two gloo processes, metrics, input errors.

Runs use the full AlexNet on a few real handwritten digits (scikit-learn's, written in the ImageNet layout).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import train
from training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
TIMING_FIELDS = {"images_per_s", "epoch_time_s", "train_time_s", "time"}


def _run(argv: list[str]) -> int:
    return train.main([*argv, "--no-progress"])


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _no_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in history]


# ------------------------------------------------------------------------------------------------- recipe
def test_recipe_defaults_are_the_papers() -> None:
    args = train.build_parser().parse_args(["--data", "x"])
    assert args.batch_size == 128
    assert args.momentum == 0.9
    assert args.weight_decay == 5e-4
    assert args.lr == 0.01
    assert args.lr_factor == 0.1
    assert args.epochs == 90
    assert args.init == "paper" and not args.no_grouping and args.dropout == 0.5
    assert args.pca_std == 0.1 and not args.no_flip and args.resize_size == 256
    assert (args.device, args.amp, args.channels_last) == ("auto", "auto", "auto")
    assert args.warmup_epochs == 0  # the paper has no warm-up
    model = torch.nn.Linear(4, 2)
    opt = train.build_optimizer(model, args)
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 5e-4)
    assert len(group["params"]) == 2  # weights and biases alike, as in the paper's update rule
    sched = train.build_scheduler(opt, args)
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert sched.mode == "min" and sched.factor == 0.1 and sched.patience == args.lr_patience
    # Stepped with the validation top-1 *error*: the lr drops by 10x once it stops improving for `patience` epochs.
    for err in [0.5] * (args.lr_patience + 2):
        sched.step(err)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_warmup_is_linear_and_ends_at_the_base_rate() -> None:
    lrs = [train.warmup_lr(0.01, 2.0, epoch, step, 4) for epoch in range(3) for step in range(4)]
    assert lrs[:7] == pytest.approx([0.01 * k / 8 for k in range(1, 8)])
    assert lrs[7:] == [None] * 5  # the last warm-up step reaches 0.01 exactly: from there the scheduler rules
    assert train.warmup_lr(0.01, 0.0, 0, 0, 4) is None


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--labels", "--output", "--resume", "--seed", "--workers", "--device", "--amp",
                 "--no-grouping", "--init", "--epochs", "--batch-size", "--lr", "--momentum", "--weight-decay",
                 "--lr-factor", "--lr-patience", "--limit-train", "--limit-val", "--max-steps-per-epoch",
                 "--mean-std", "torchrun"):
        assert flag in text, flag


def _runtime(**kw: str) -> train.Runtime:
    args = argparse.Namespace(**{"device": "auto", "amp": "auto", "channels_last": "auto", "deterministic": False,
                                 **kw})
    return train.setup_runtime(args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only choices")
def test_auto_choices_on_cpu() -> None:
    rt = _runtime()
    assert rt.device.type == "cpu" and not rt.amp and not rt.channels_last  # bf16 autocast is slow on most CPUs
    assert _runtime(amp="bf16", channels_last="on").amp  # but can be asked for
    with pytest.raises(train.TrainError, match="no CUDA device"):
        _runtime(device="cuda")


# -------------------------------------------------------------------------------------------- resume, metrics
def test_resume_continues_exactly_and_metrics_are_written(digits: Path, tmp_path: Path) -> None:
    """2 epochs straight == 1 epoch + --resume: bit-identical weights, momentum, scheduler state and metrics.

    The two runs also use different worker counts (0 vs 1 then 2): the batches do not depend on it.
    """
    labels = tmp_path / "names.txt"
    labels.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    common = ["--data", str(digits), "--limit-train", "8", "--batch-size", "4", "--init", "kaiming",
              "--lr-patience", "0", "--lr", "0.003", "--seed", "7", "--labels", str(labels)]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _run([*common, "--output", str(straight), "--epochs", "2", "--workers", "0"]) == 0
    assert _run([*common, "--output", str(split), "--epochs", "1", "--workers", "1"]) == 0
    first = load_checkpoint(split / "last.pt")
    assert first["epoch"] == 1
    # A crash after the checkpoint but before the metrics line: the resumed run rewrites the files from it.
    with open(split / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 99}\n')
    assert _run(["--resume", str(split / "last.pt"), "--epochs", "2", "--workers", "2", "--data", str(digits)]) == 0

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert _same_state(a["model_state"], b["model_state"])
    assert not _same_state(first["model_state"], b["model_state"])  # it did train on after resuming
    momentum_a = [s["momentum_buffer"] for s in a["optimizer_state"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer_state"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b, strict=True))
    assert a["scheduler_state"] == b["scheduler_state"] and a["scheduler_state"]["last_epoch"] == 2
    assert a["optimizer_state"]["param_groups"] == b["optimizer_state"]["param_groups"]  # lr included
    assert _no_timing(a["history"]) == _no_timing(b["history"])

    # Checkpoint keys that export reads.
    assert a["model_config"] == {"arch": "alexnet", "num_classes": 10, "in_channels": 3, "grouped": True,
                                 "dropout": 0.5}
    assert [name for _id, name in a["labels"]][:3] == ["zero", "one", "two"]
    assert [i for i, _name in a["labels"]] == [str(d) for d in range(10)]
    assert a["preprocessing"]["crop_size"] == 224 and a["preprocessing"]["crops"] == "ten"
    assert a["summary"]["dataset"] == "digits" and a["summary"]["epochs"] == 2
    assert a["summary"]["train_images"] == 8 and a["summary"]["val_images"] == 10  # what was used
    assert a["summary"]["val_top1"] == a["history"][-1]["val_top1"]
    # PCA colour lighting from the training images' own RGB covariance (the paper's), the same after the resume. The
    # digits are grey (R = G = B): one component, brightness, along (1, 1, 1)/√3, and none in colour.
    assert a["lighting"] == b["lighting"] == first["lighting"]
    lighting = a["lighting"]
    assert (lighting["eigen"], lighting["alpha_std"], lighting["images"]) == ("computed", 0.1, 40)
    assert lighting["eigval"][0] > 0.01 and lighting["eigval"][1] < 1e-9 and lighting["eigval"][2] < 1e-9
    assert [row[0] for row in lighting["eigvec"]] == pytest.approx([3 ** -0.5] * 3, abs=1e-6)
    assert a["args"]["pca"] == "compute"
    best = load_checkpoint(straight / "best.pt")
    assert best["summary"]["best_epoch"] == best["epoch"]
    assert best["summary"]["val_top1"] == max(r["val_top1"] for r in a["history"])

    for run_dir in (straight, split):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2]
        assert set(rows[0]) == set(train.METRIC_FIELDS)
        with open(run_dir / "metrics.csv", newline="") as fh:
            table = list(csv.DictReader(fh))
        assert [int(r["epoch"]) for r in table] == [1, 2]
        for r, t in zip(rows, table, strict=True):
            assert float(t["val_top1"]) == r["val_top1"] and float(t["train_loss"]) == pytest.approx(r["train_loss"])
            assert 0 <= r["val_top1"] <= r["val_top5"] <= 1 and r["images_per_s"] > 0 and r["epoch_time_s"] > 0
            assert r["train_samples"] == 8 and r["val_images"] == 10


@pytest.mark.slow
def test_resuming_a_run_from_before_the_lighting_record_keeps_imagenets(digits: Path, tiny_run: Path,
                                                                        tmp_path: Path) -> None:
    """A checkpoint written before issue 13 has no ``lighting`` entry: it was trained with ImageNet's constants, and
    a resumed run goes on with them (and records so) instead of switching to computed ones halfway."""
    from training.checkpoint import lighting_from_checkpoint
    from training.presets import imagenet_lighting

    run = shutil.copytree(tiny_run, tmp_path / "run")  # the session's one-step run (conftest.py); resumed in a copy
    old = load_checkpoint(run / "last.pt")
    assert old["lighting"]["eigen"] == "computed"
    del old["lighting"], old["args"]["pca"]  # what alexnet-train wrote before the record existed
    torch.save(old, run / "last.pt")
    assert lighting_from_checkpoint(old) == imagenet_lighting(0.1)
    assert _run(["--resume", str(run / "last.pt"), "--epochs", "2", "--data", str(digits)]) == 0
    resumed = load_checkpoint(run / "last.pt")
    assert resumed["epoch"] == 2 and resumed["args"]["pca"] == "imagenet"
    assert resumed["lighting"] == {"eigen": "imagenet", "alpha_std": 0.1, "eigval": [0.2175, 0.0188, 0.0045],
                                   "eigvec": [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.814],
                                              [-0.5836, -0.6948, 0.4203]], "images": None}
    assert lighting_from_checkpoint({"args": {"pca_std": 0.0}}).eigen == "none"


def test_an_existing_run_is_not_overwritten(digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "last.pt").write_bytes(b"")
    assert _run(["--data", str(digits), "--output", str(tmp_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------- DDP
def test_ddp_two_gloo_processes_match_one_process(digits: Path, tmp_path: Path) -> None:
    """torchrun with two CPU processes (gloo), 2 images each per step == one process with 4 images per step.

    Dropout is off so that the per-process dropout masks don't differ; the order and the augmentation of every
    image are functions of (seed, epoch, index), so both runs see the same images, augmented the same way.
    """
    common = ["--data", str(digits), "--limit-train", "8", "--epochs", "1", "--dropout", "0", "--init", "kaiming",
              "--lr", "0.001", "--workers", "0", "--seed", "3", "--no-progress"]
    ddp_out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training.train", *common, "--batch-size", "2", "--output", str(ddp_out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "[rank 0/2] cpu, backend gloo" in out and "[rank 1/2] cpu, backend gloo" in out  # both ranks ran
    assert out.count("epoch 1/1:") == 1  # only rank 0 reports

    single_out = tmp_path / "single"
    assert _run([*common, "--batch-size", "4", "--output", str(single_out)]) == 0
    ddp, single = load_checkpoint(ddp_out / "last.pt"), load_checkpoint(single_out / "last.pt")
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    (d_row,), (s_row,) = ddp["history"], single["history"]
    assert d_row["train_samples"] == s_row["train_samples"] == 8  # both shards counted
    assert d_row["val_images"] == s_row["val_images"] == 10  # every validation image exactly once
    assert d_row["train_loss"] == pytest.approx(s_row["train_loss"], rel=1e-5)
    assert d_row["val_loss"] == pytest.approx(s_row["val_loss"], rel=1e-4)
    assert d_row["val_top1"] == s_row["val_top1"]
    for name, w in single["model_state"].items():
        assert torch.allclose(ddp["model_state"][name], w, rtol=1e-4, atol=1e-6), name
    assert single["summary"]["train_images"] == ddp["summary"]["train_images"] == 8


# --------------------------------------------------------------------------------------------- bad inputs
def _bad_dataset(kind: str, digits: Path, root: Path) -> Path:
    if kind == "missing":
        return root / "nowhere"
    shutil.copytree(digits, root / "ds")
    ds = root / "ds"
    if kind == "no-val":
        shutil.rmtree(ds / "val")
    elif kind == "empty-class":
        for f in (ds / "train" / "3").iterdir():
            f.unlink()
        (ds / "train" / "3" / "notes.txt").write_text("not an image")
    elif kind == "mismatch":
        shutil.rmtree(ds / "val" / "7")
        (ds / "val" / "seven").mkdir()
        shutil.copy(next((ds / "train" / "7").iterdir()), ds / "val" / "seven" / "x.png")
    elif kind == "no-classes":
        shutil.rmtree(ds / "train")
        (ds / "train").mkdir()
    return ds


@pytest.mark.parametrize(("kind", "message"), [
    ("missing", "does not exist"),
    ("no-val", "has no val/ folder"),
    ("empty-class", "1 class folder(s) hold no images (3)"),
    ("mismatch", "only in train: ['7'], only in val: ['seven']"),
    ("no-classes", "has no class folders"),
])
def test_bad_dataset_folders_are_clear_errors(kind: str, message: str, digits: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = _bad_dataset(kind, digits, tmp_path)
    assert _run(["--data", str(data), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet-train: error:") and message in err, err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_hidden_folders_are_not_classes(digits: Path, tmp_path: Path) -> None:
    from training.data import open_folders

    ds = tmp_path / "ds"
    shutil.copytree(digits, ds)
    (ds / "train" / ".ipynb_checkpoints").mkdir()
    assert open_folders(ds).classes == [str(d) for d in range(10)]


def test_labels_that_do_not_match_the_folders(digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    assert _run(["--data", str(digits), "--labels", str(labels), "--output", str(tmp_path / "run")]) == 2
    assert "does not name the classes" in capsys.readouterr().err


# ------------------------------------------------------------------------------ other networks, the d2l recipe
# The book's settings per section, copied from d2l-ai/d2l-pytorch-colab @ 0009bbc chapter_convolutional-modern/*:
# `lr, num_epochs, batch_size = ...` and `load_data_fashion_mnist(batch_size, resize=...)`.
BOOK_SETTINGS = {  # arch: (lr, batch, resize)
    "d2l-alexnet": (0.01, 128, 224), "vgg11": (0.05, 128, 224), "nin": (0.1, 128, 224),
    "googlenet": (0.1, 128, 96), "resnet18": (0.05, 256, 96), "densenet": (0.1, 256, 96),
}


@pytest.mark.parametrize("arch", list(BOOK_SETTINGS))
def test_d2l_recipe_is_the_books_per_network(arch: str) -> None:
    args = train.parse_args(["--data", "x", "--recipe", "d2l", "--arch", arch])
    lr, batch, size = BOOK_SETTINGS[arch]
    assert (args.lr, args.batch_size, args.input_size, args.resize_size, args.epochs) == (lr, batch, size, size, 10)
    # train_ch6: plain SGD at a constant rate, Xavier weights; load_data_fashion_mnist: Resize + ToTensor only
    assert (args.momentum, args.weight_decay, args.lr_schedule, args.init) == (0.0, 0.0, "constant", "xavier")
    assert args.no_flip and args.pca_std == 0 and args.mean_std == "none"
    assert args.width_divisor == (4 if arch == "vgg11" else 1)  # `ratio = 4`
    assert train.build_scheduler(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=args.lr), args) is None
    # A flag on the command line still wins over the recipe.
    assert train.parse_args(["--data", "x", "--recipe", "d2l", "--arch", arch, "--lr", "0.2", "--flip"]).lr == 0.2


def test_help_shows_the_recipe_of_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.main(["--recipe", "d2l", "--arch", "resnet18", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.05)" in text and "(default: 256)" in text and "fashion-mnist:DIR" in text


@pytest.mark.slow
def test_d2l_alexnet_on_fashion_mnist_resumes_exactly(fashion_mnist_root: Path, tmp_path: Path) -> None:
    """The book's network and recipe on Fashion-MNIST held in memory: 2 epochs == 1 epoch + --resume."""
    common = ["--data", f"fashion-mnist:{fashion_mnist_root}", "--arch", "d2l-alexnet", "--recipe", "d2l",
              "--subset", "24", "--batch-size", "12", "--max-steps-per-epoch", "1", "--seed", "3"]
    assert _run([*common, "--output", str(tmp_path / "a"), "--epochs", "2"]) == 0
    assert _run([*common, "--output", str(tmp_path / "b"), "--epochs", "1"]) == 0
    assert _run(["--resume", str(tmp_path / "b" / "last.pt"), "--epochs", "2", "--data",
                 f"fashion-mnist:{fashion_mnist_root}"]) == 0
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert _same_state(a["model_state"], b["model_state"]) and _no_timing(a["history"]) == _no_timing(b["history"])
    assert a["model_config"] == {"arch": "d2l-alexnet", "num_classes": 10, "in_channels": 1, "dropout": 0.5}
    pre = a["preprocessing"]
    assert (pre["resize_size"], pre["crop_size"], pre["input_channels"], pre["crops"]) == (224, 224, 1, "center")
    assert (pre["mean"], pre["std"]) == ([0.0], [1.0])  # ToTensor only
    assert a["labels"][0] == ["tshirt_top", "T-shirt/top"] and a["labels"][9] == ["ankle_boot", "Ankle boot"]
    summary = a["summary"]
    assert (summary["dataset"], summary["train_images"], summary["val_images"]) == ("fashion-mnist", 24, 10)
    assert a["optimizer_state"]["param_groups"][0]["momentum"] == 0 and a["scheduler_state"] is None
    assert a["history"][-1]["train_samples"] == 12 and a["history"][-1]["val_images"] == 10
    # Resumed without --epochs, the run takes its own recipe's defaults: the book's 10 epochs, not the paper's 90.
    resumed = train.parse_args(["--resume", str(tmp_path / "a" / "last.pt"), "--data", "fashion-mnist"])
    assert (resumed.recipe, resumed.arch, resumed.epochs, resumed.lr) == ("d2l", "d2l-alexnet", 10, 0.01)


@pytest.mark.slow
def test_paper_recipe_on_fashion_mnist_with_another_network(fashion_mnist_root: Path, fashion_mnist,
                                                            tmp_path: Path) -> None:
    """The paper's recipe on any network: random crops of a larger square, reflections, the training set's
    mean/std (computed from the data in memory), ten crops at test time."""
    assert _run(["--data", f"fashion-mnist:{fashion_mnist_root}", "--arch", "resnet18", "--subset", "20",
                 "--input-size", "64", "--resize-size", "72", "--mean-std", "compute", "--epochs", "1",
                 "--batch-size", "10", "--max-steps-per-epoch", "1", "--val-crops", "ten",
                 "--output", str(tmp_path / "run")]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    pre = ckpt["preprocessing"]
    assert (pre["resize_size"], pre["crop_size"], pre["crops"], pre["input_channels"]) == (72, 64, "ten", 1)
    pixels = fashion_mnist.train.images / 255.0
    assert pre["mean"] == [pytest.approx(pixels.mean(), abs=1e-5)] and pre["std"] == [pytest.approx(pixels.std(),
                                                                                                      abs=1e-5)]
    assert ckpt["optimizer_state"]["param_groups"][0]["momentum"] == 0.9
    assert ckpt["scheduler_state"] is not None and ckpt["init"] == "paper"
    assert ckpt["lighting"] == {"eigen": "none", "alpha_std": 0.0, "eigval": [], "eigvec": [], "images": None}  # grey


@pytest.mark.parametrize(("argv", "message"), [
    (["--arch", "vgg11", "--no-grouping"], "--no-grouping applies to --arch alexnet only"),
    (["--arch", "nin", "--init", "caffe"], "--init caffe is the paper's alexnet's"),
    (["--subset", "10", "--limit-train", "5"], "--subset must be at least 1 and replaces"),
    (["--input-size", "300"], "must be at least --input-size (300)"),
    (["--arch", "resnet18", "--width-divisor", "2"], "--width-divisor applies to --arch vgg11 only"),
])
def test_option_errors_are_one_line(argv: list[str], message: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--data", str(tmp_path), "--output", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alexnet-train: error:") and message in err[0], err
