"""`python -m bench.experiment`: the whole Fashion-MNIST experiment on a CPU subset, and its argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.python import python_without

from alexnet_store import ModelStore
from bench import experiment

GPU_MACHINE_LACKS = ["fastapi", "uvicorn", "pydantic", "pydantic_settings", "starlette", "python_multipart",
                     "multipart", "sklearn", "matplotlib"]


@pytest.mark.slow
def test_train_export_evaluate_serve_and_report(fashion_mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    argv = ["--arch", "d2l-alexnet", "--data", f"fashion-mnist:{fashion_mnist_root}", "--subset", "40", "--epochs",
            "1", "--output", str(out), "--bench-duration", "1", "--no-progress"]
    assert experiment.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    (row,) = report["runs"]
    assert row["arch"] == "d2l-alexnet" and row["recipe"] == "d2l" and "error" not in row
    training = row["training"]
    assert training["epochs"] == 1 and training["test_images"] == 10 and training["examples_per_s"] > 0

    # The version in the store: the book's network, 1 channel, the whole 224 image.
    version = ModelStore(out / "store").resolve("d2l-alexnet-d2l")
    meta = version.metadata
    assert (meta.preprocessing.input_channels, meta.preprocessing.resize_size, meta.preprocessing.crop_size) == (1, 224,
                                                                                                                224)
    assert meta.architecture.name == "d2l-alexnet" and meta.architecture.parameters == 46_764_746
    assert meta.training.dataset == "fashion-mnist" and meta.training.train_images == 40
    assert meta.parity.max_rel_diff < 1e-4 and meta.labels[0].name == "T-shirt/top"

    # alexnet-eval ran on the training's own test images, through the service's pipeline; the numbers are its report's.
    evaluation = json.loads(Path(row["alexnet_eval"]["report"]).read_text())
    assert evaluation["dataset"]["samples"] == 10 and evaluation["failed"]["count"] == 0
    assert row["alexnet_eval"]["ten_top1"] == evaluation["crops"]["ten"]["top1"]
    assert row["alexnet_eval"]["center_top1"] == evaluation["crops"]["center"]["top1"]
    # The served model sees the pixels PyTorch validated on (same resize, luma of a grey image = the image):
    # at most one of the ten images may land differently, on a near-tie.
    assert abs(row["alexnet_eval"]["center_top1"] - training["test_acc"]) <= 0.1 + 1e-9

    # Served by alexnet-serve and driven by alexnet-bench's load generator, without errors.
    levels = row["bench"]["levels"]
    assert {(lv["crops"], lv["concurrency"]) for lv in levels} == {("ten", 1), ("ten", 16), ("center", 1),
                                                                   ("center", 16)}
    assert all(lv["errors"] == 0 and lv["images_per_s"] > 0 for lv in levels)

    text = (out / "report.md").read_text()
    assert "| d2l-alexnet | d2l | 1 |" in text and "0.332 / 0.878 / 0.880 / 4,153.2" in text
    assert "d2l-ai/d2l-pytorch-colab@0009bbc" in text and "## Served" in text

    # A finished run is never overwritten.
    assert experiment.main(argv) == 2


def test_time_budget_and_argument_errors(fashion_mnist_root: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exp"
    assert experiment.main(["--arch", "nin,resnet18:paper:3", "--data", f"fashion-mnist:{fashion_mnist_root}",
                            "--subset", "20", "--output", str(out), "--time-budget", "0", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["runs"] == [] and [(r["arch"], r["recipe"]) for r in report["skipped"]] == [
        ("nin", "d2l"), ("resnet18", "paper")]
    assert "skipped: time budget" in (out / "report.md").read_text()
    capsys.readouterr()
    for bad, message in ((["--arch", "lenet"], "unknown network 'lenet'"),
                         (["--arch", "nin:sgd"], "unknown recipe 'sgd'"),
                         (["--arch", "nin:d2l:0"], "epochs must be a positive integer"),
                         (["--arch", "nin,nin"], "the same recipe twice"),
                         (["--arch", "nin", "--subset", "0"], "--subset must be at least 1"),
                         (["--arch", "nin", "--data", f"fashion-mnist:{tmp_path / 'none'}"], "does not exist")):
        assert experiment.main([*bad, "--output", str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("experiment: error:") and message in err[0], err


def test_runs_parse() -> None:
    runs = experiment.parse_runs("d2l-alexnet, alexnet:paper:15,vgg11", "d2l", None)
    assert [(r.arch, r.recipe, r.epochs, r.name) for r in runs] == [
        ("d2l-alexnet", "d2l", None, "d2l-alexnet-d2l"), ("alexnet", "paper", 15, "alexnet-paper"),
        ("vgg11", "d2l", None, "vgg11-d2l")]


@pytest.mark.slow
def test_train_export_evaluate_need_no_web_stack(fashion_mnist_root: Path, tmp_path: Path) -> None:
    """What the GPU machine has: PyTorch, onnx, onnxruntime — no FastAPI, uvicorn, pydantic, scikit-learn. The
    experiment trains, exports and evaluates there, and skips serving with a message saying why."""
    out = tmp_path / "exp"
    argv = ["--arch", "nin", "--data", f"fashion-mnist:{fashion_mnist_root}", "--subset", "20", "--epochs", "1",
            "--max-steps-per-epoch", "1", "--output", str(out), "--no-progress"]
    code = f"from bench import experiment; raise SystemExit(experiment.main({argv!r}))"
    done = python_without(GPU_MACHINE_LACKS, code)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((out / "report.json").read_text())["runs"]
    assert row["alexnet_eval"]["images"] == 10 and row["model"]["input"] == "1×224² of 224²"
    assert "this Python lacks fastapi, uvicorn, pydantic_settings, python_multipart" in row["bench"]["skipped"]
    assert "serving skipped" in (out / "report.md").read_text()

    # The service answers what the trained network computes on the pixels it was trained on: ONNX Runtime behind
    # the service's decoder and serving graph, against PyTorch on the training pipeline's batch, image by image
    # (at 224 the two resizes give identical pixels).
    import numpy as np
    import torch
    from PIL import Image
    from support.app import classify

    from service.model import ClassifierModel
    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.device_data import Pipeline

    network = model_from_checkpoint(load_checkpoint(out / "runs" / "nin-d2l" / "last.pt")).eval()
    served = ClassifierModel(ModelStore(out / "store").resolve("nin-d2l"), providers=["CPUExecutionProvider"])
    served.load(warmup_batch=1)
    pipeline = Pipeline(224, 224, (0.0,), (1.0,), 1)
    for path in sorted((out / "test-images").rglob("*.png"))[:5]:
        with Image.open(path) as img:
            grey = torch.from_numpy(np.asarray(img).copy())[None, None]
        with torch.no_grad():
            expected = network(pipeline.evaluate(grey)).softmax(dim=1)[0].numpy()
        got = classify(served, [path.read_bytes()], schemes=("center",)).images[0].schemes["center"].probabilities
        assert expected.max() - expected.min() > 1e-3  # not a uniform answer: the comparison means something
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
