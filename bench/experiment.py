"""`python -m bench.experiment` (`make experiment`): the d2l book's Fashion-MNIST experiment in one command.

    python -m bench.experiment --arch d2l-alexnet,alexnet --recipe d2l          # the book's settings
    python -m bench.experiment --arch d2l-alexnet,alexnet:paper:15              # per network: ARCH[:RECIPE[:EPOCHS]]
    python -m bench.experiment --arch d2l-alexnet --subset 2000 --epochs 1      # a CPU run, minutes

For each network (with its recipe), in this process:
1. train it with alexnet-train's code (`training.train.run`) on Fashion-MNIST read from its IDX files and held
   on the device (training/device_data.py);
2. export the last epoch's weights as a new version of the model store (`training.export.export_to_store`:
   ONNX Runtime checked against PyTorch on Fashion-MNIST test images);
3. evaluate that version with `alexnet-eval` (`service.evaluation.cli.main`: the service's decoding, crops and serving
   graph in ONNX Runtime), ten crops and the centre crop, on the test images written once as PNG files;
4. on CUDA (``--torch-eval``), also PyTorch's ten-crop accuracy on the device over every test image;
5. serve the version with `alexnet-serve` and drive it with `alexnet-bench` (`bench.benchmark.main`), when
   FastAPI, uvicorn and pydantic-settings are installed; skipped with a message otherwise (the GPU machine
   has none of them: training, export and evaluation need only PyTorch, onnx and onnxruntime).
After every network it rewrites ``report.json`` and ``report.md`` in ``--output``: one row per network and recipe
with the book's printed numbers beside ours (training/recipes.py), so an interrupted run keeps what finished.
Exit status: 0 when every network ran, 1 when one failed (the report says which and why), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import math
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet_store.vocabulary import is_image_file
from training import fashion_mnist, recipes
from training.architectures import ARCHITECTURES
from training.data import DatasetError, stratified_subset, subset_limits

# What alexnet-serve imports beyond training's stack; python-multipart's module was "multipart" before 0.0.13.
SERVING_MODULES = (("fastapi",), ("uvicorn",), ("pydantic_settings",), ("python_multipart", "multipart"))
PARITY_IMAGES = 4  # Fashion-MNIST test images (of different classes) for each export's parity check
BENCH_IMAGES = 50


class ExperimentError(ValueError):
    """Arguments or an output folder the experiment cannot run with (exit status 2)."""


@dataclass(frozen=True)
class RunSpec:
    arch: str
    recipe: str
    epochs: int | None  # None: the recipe's

    @property
    def name(self) -> str:
        """The model's name in the store and its training folder: ``<arch>-<recipe>``."""
        return f"{self.arch}-{self.recipe}"


def parse_runs(text: str, recipe: str, epochs: int | None) -> list[RunSpec]:
    """``ARCH[:RECIPE[:EPOCHS]],...`` → run specs; `recipe` and `epochs` fill what an item leaves out."""
    runs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        arch, _, rest = item.partition(":")
        own_recipe, _, own_epochs = rest.partition(":")
        if arch not in ARCHITECTURES:
            raise ExperimentError(f"--arch {item!r}: unknown network {arch!r} (known: {', '.join(ARCHITECTURES)})")
        if own_recipe and own_recipe not in recipes.RECIPES:
            raise ExperimentError(f"--arch {item!r}: unknown recipe {own_recipe!r} ({', '.join(recipes.RECIPES)})")
        if own_epochs and not (own_epochs.isdigit() and int(own_epochs) > 0):
            raise ExperimentError(f"--arch {item!r}: epochs must be a positive integer")
        runs.append(RunSpec(arch, own_recipe or recipe, int(own_epochs) if own_epochs else epochs))
    if not runs:
        raise ExperimentError("--arch names no network")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ExperimentError(f"--arch lists a network with the same recipe twice: {names}")
    return runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.experiment",
        description="The d2l book's Fashion-MNIST experiment for one or more networks: train → export → alexnet-eval "
                    "(ten crops vs the centre crop) → serve and benchmark, with a JSON and Markdown report. "
                    "See docs/experiment.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", required=True,
                   help="networks, comma-separated, each ARCH[:RECIPE[:EPOCHS]]; networks: " + ", ".join(ARCHITECTURES))
    p.add_argument("--recipe", choices=recipes.RECIPES, default="d2l", help="recipe of the networks that name none")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the networks that name none (default: the recipe's: d2l 10, paper 90)")
    p.add_argument("--data", default=fashion_mnist.SCHEME,
                   help="fashion-mnist[:DIR] (default folder: the Debian package's) or an ImageNet-layout folder")
    p.add_argument("--subset", type=int, default=None,
                   help="a class-balanced N training images and the test images in proportion (CPU runs, tests)")
    p.add_argument("--output", type=Path, default=Path("runs/experiment"),
                   help="runs/<arch>-<recipe>/ (checkpoints, metrics), the test PNGs and report.{json,md}")
    p.add_argument("--model-store", type=Path, default=None,
                   help="where versions are published (default: OUTPUT/store)")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="alexnet-eval on at most N of the test images (round-robin over the classes; default: all)")
    p.add_argument("--torch-eval", choices=("auto", "on", "off"), default="auto",
                   help="PyTorch's ten-crop accuracy on the device over all test images; auto: on CUDA only")
    p.add_argument("--bench", choices=("auto", "off"), default="auto",
                   help="serve each version and benchmark it (alexnet-bench); auto: when FastAPI/uvicorn are installed")
    p.add_argument("--bench-duration", type=float, default=5.0, help="seconds per benchmark level")
    p.add_argument("--time-budget", type=float, default=None,
                   help="start no further network once this many seconds have passed (they are reported as skipped)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    p.add_argument("--seed", type=int, default=0, help="seed of training and of the subsets")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="stop each epoch after N steps (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# -- the steps ----------------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What every network's run shares: the data's test images on disk, the store, the settings."""

    args: argparse.Namespace
    store_root: Path
    eval_dir: Path
    bench_dir: Path
    parity: list
    train_images: int | None
    eval_images: int
    log: Callable[[str], None]


def prepare(args: argparse.Namespace, log: Callable[[str], None]) -> Context:
    """Check the data, write the test images the evaluation reads (once), pick the parity and benchmark images."""
    from training.export import load_images

    args.output.mkdir(parents=True, exist_ok=True)
    root = fashion_mnist.parse_spec(args.data)
    train_images = None
    if root is not None:
        data = fashion_mnist.load(root)
        eval_dir = args.output / "test-images"
        limit_val, train_images = None, len(data.train.labels)
        if args.subset is not None:
            train_images, limit_val = subset_limits(args.subset, len(data.train.labels), len(data.test.labels),
                                                    len(data.classes))
        # The very images the training validates on (the same seeded, class-balanced choice), so the served
        # model's accuracy and the training's own are over one set.
        indices = stratified_subset(data.test.labels.tolist(), limit_val, args.seed)
        if eval_dir.is_dir() and sum(1 for _ in eval_dir.rglob("*.png")) == len(indices):
            log(f"test images: reusing {eval_dir}")
        else:
            if eval_dir.exists():
                shutil.rmtree(eval_dir)
            log(f"writing {len(indices)} test images to {eval_dir} ...")
            fashion_mnist.write_folder(data.test, eval_dir, indices, progress=not args.no_progress)
    else:
        eval_dir = Path(args.data) / "val"
        if not eval_dir.is_dir():
            raise DatasetError(f"{args.data} has no val/ folder to evaluate on")
    files = sorted(p for p in eval_dir.rglob("*") if p.is_file() and is_image_file(p.name))
    by_class: dict[Path, Path] = {}
    for path in files:
        by_class.setdefault(path.parent, path)
    parity = load_images(list(by_class.values())[:PARITY_IMAGES])
    bench_dir = args.output / "bench-images"
    if not bench_dir.is_dir():  # loadgen reads one flat folder
        bench_dir.mkdir()
        step = max(1, len(files) // BENCH_IMAGES)
        for path in files[::step][:BENCH_IMAGES]:
            shutil.copyfile(path, bench_dir / f"{path.parent.name}_{path.name}")
    store_root = args.model_store or args.output / "store"
    return Context(args, store_root, eval_dir, bench_dir, parity, train_images, len(files), log)


def train_step(spec: RunSpec, ctx: Context) -> tuple[Path, list[dict[str, Any]], list[str]]:
    from training import train

    args = ctx.args
    argv = ["--data", args.data, "--arch", spec.arch, "--recipe", spec.recipe, "--output",
            str(args.output / "runs" / spec.name), "--seed", str(args.seed), "--device", args.device]
    if spec.epochs is not None:
        argv += ["--epochs", str(spec.epochs)]
    if args.subset is not None:
        argv += ["--subset", str(args.subset)]
    if args.max_steps_per_epoch is not None:
        argv += ["--max-steps-per-epoch", str(args.max_steps_per_epoch)]
    if args.no_progress:
        argv.append("--no-progress")
    ctx.log(f"alexnet-train {' '.join(argv)}")
    result = train.run(train.parse_args(argv), log=ctx.log)
    return result.last, result.history, argv


def export_step(spec: RunSpec, checkpoint: Path, ctx: Context, train_argv: list[str]):
    from alexnet_store import ModelStore
    from training.checkpoint import (
        labels_from_checkpoint,
        load_checkpoint,
        model_from_checkpoint,
        preprocessing_from_checkpoint,
        summary_from_checkpoint,
    )
    from training.export import export_to_store

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    source = {"experiment": "bench.experiment", "arch": spec.arch, "recipe": spec.recipe,
              "checkpoint": str(checkpoint.resolve()), "train_argv": train_argv}
    version = export_to_store(model, ModelStore(ctx.store_root), spec.name, labels_from_checkpoint(ckpt),
                              preprocessing_from_checkpoint(ckpt), training=summary_from_checkpoint(ckpt),
                              images=ctx.parity, source=source, log=ctx.log)
    return version, model, ckpt


def eval_step(version, ctx: Context) -> dict[str, Any]:
    """alexnet-eval on the stored version, both crop schemes from one decode; its JSON report's numbers."""
    from service.evaluation.cli import main as alexnet_eval

    report_path = ctx.args.output / "runs" / version.name / f"eval-v{version.version}.json"
    argv = [str(ctx.eval_dir), "--model-store", str(ctx.store_root), "--model-name", version.name,
            "--model-version", str(version.version), "--crops", "both", "--report", str(report_path)]
    if ctx.args.eval_limit is not None:
        argv += ["--limit", str(ctx.args.eval_limit)]
    if ctx.args.no_progress:
        argv.append("--no-progress")
    ctx.log(f"alexnet-eval {' '.join(argv)}")
    rc = alexnet_eval(argv)
    if rc != 0:
        raise RuntimeError(f"alexnet-eval exited with {rc}")
    report = json.loads(report_path.read_text())
    crops = report["crops"]
    return {"report": str(report_path), "images": crops["center"]["images"], "failed": report["failed"]["count"],
            "provider": report["model"]["provider"], "seconds": report["seconds"],
            "center_top1": crops["center"]["top1"], "ten_top1": crops["ten"]["top1"],
            "center_top5": crops["center"]["top5"], "ten_top5": crops["ten"]["top5"],
            "images_per_s": crops["ten"]["images_per_second"]}


def torch_eval_step(model, ckpt: dict, ctx: Context) -> dict[str, Any]:
    """PyTorch's ten-crop accuracy of the trained weights on the device (the training validated the centre crop)."""
    import torch

    from training import train
    from training.data import DataConfig
    from training.device_data import memory_loaders

    args = ctx.args
    rt = train.setup_runtime(argparse.Namespace(device=args.device, amp="auto", channels_last="auto",
                                                deterministic=False))
    data = train.open_data(args.data)
    if data.memory is None:
        raise ExperimentError("--torch-eval needs the data in memory (fashion-mnist)")
    pre = ckpt["preprocessing"]
    limit_val = None
    if args.subset is not None:
        _, limit_val = subset_limits(args.subset, data.train_count, data.val_count, len(data.classes))
    cfg = DataConfig(root=data.root, batch_size=256, seed=args.seed, mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                     resize_size=pre["resize_size"], crop_size=pre["crop_size"], val_crops="ten", limit_train=1,
                     limit_val=limit_val, in_channels=pre.get("input_channels", 3))
    loaders = memory_loaders(data.memory.train, data.memory.test, cfg, rt.device)
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    stats = train.evaluate(model, loaders.val, rt)
    return {"ten_top1": stats["val_top1"], "ten_top5": stats["val_top5"], "images": stats["val_images"],
            "seconds": time.perf_counter() - start}


def serving_available() -> list[str]:
    """The serving modules this Python cannot import (empty: alexnet-serve can run)."""
    missing = []
    for names in SERVING_MODULES:
        for name in names:
            try:
                importlib.import_module(name)
                break
            except ImportError:
                continue
        else:
            missing.append(names[0])
    return missing


def bench_step(version, ctx: Context) -> dict[str, Any]:
    """alexnet-serve on the version, driven by alexnet-bench's load generator: images/s and latency per level."""
    from bench.benchmark import main as alexnet_bench

    path = ctx.args.output / "runs" / version.name / f"bench-v{version.version}.json"
    argv = ["--model-store", str(ctx.store_root), "--model-name", version.name, "--model-version",
            str(version.version), "--images", str(ctx.bench_dir), "--concurrency", "1,16", "--crops", "ten,center",
            "--duration", str(ctx.args.bench_duration), "--max-requests", "400", "--no-baseline", "--no-ceiling",
            "--no-rollover", "--json", str(path)]
    ctx.log(f"alexnet-bench {' '.join(argv)}")
    rc = alexnet_bench(argv)
    if rc != 0:
        raise RuntimeError(f"alexnet-bench exited with {rc}")
    result = json.loads(path.read_text())
    levels = [{"target": r["target"], "crops": r["crops"], "concurrency": r["concurrency"],
               "images_per_s": r["images_per_s"],
               "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"], "errors": r["errors"],
               "mean_batch_patches": r.get("batching", {}).get("mean_batch_patches")} for r in result["runs"]]
    return {"json": str(path), "levels": levels}


# -- one network ------------------------------------------------------------------------------------------------
def training_numbers(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The book's four numbers from our history: the last epoch's loss and accuracies, and examples/s over all
    epochs' training steps (``train_ch6`` times the steps of every epoch, not data loading or evaluation)."""
    last = history[-1]
    samples = sum(r["train_samples"] for r in history)
    seconds = sum(r["train_time_s"] for r in history)
    return {"epochs": last["epoch"], "train_loss": last["train_loss"], "train_acc": last["train_top1"],
            "test_acc": last["val_top1"], "test_images": last["val_images"],
            "examples_per_s": samples / seconds if seconds > 0 else math.nan,
            "examples_per_s_last_epoch": last["images_per_s"], "train_seconds": seconds}


def run_one(spec: RunSpec, ctx: Context, device: str) -> dict[str, Any]:
    row: dict[str, Any] = {"arch": spec.arch, "recipe": spec.recipe, "name": spec.name, "device": device}
    book, source = recipes.book_result(spec.arch)
    row["book"] = {**dataclasses.asdict(book), "source": source, "recipe": "d2l",
                   "network": "d2l-alexnet" if spec.arch == "alexnet" else spec.arch}
    start = time.perf_counter()
    checkpoint, history, argv = train_step(spec, ctx)
    row["training"] = {**training_numbers(history), "checkpoint": str(checkpoint), "argv": argv}
    row["seconds"] = {"train": time.perf_counter() - start}
    start = time.perf_counter()
    version, model, ckpt = export_step(spec, checkpoint, ctx, argv)
    pre = version.metadata.preprocessing
    row["model"] = {"store": str(ctx.store_root), "name": version.name, "version": version.version,
                    "path": str(version.path), "parameters": version.metadata.architecture.parameters,
                    "input": f"{pre.input_channels}×{pre.crop_size}² of {pre.resize_size}²",
                    "parity_max_rel_diff": version.metadata.parity.max_rel_diff}
    row["seconds"]["export"] = time.perf_counter() - start
    start = time.perf_counter()
    row["alexnet_eval"] = eval_step(version, ctx)
    row["seconds"]["alexnet_eval"] = time.perf_counter() - start
    args = ctx.args
    import torch

    if args.torch_eval == "on" or (args.torch_eval == "auto" and torch.cuda.is_available() and args.device != "cpu"):
        start = time.perf_counter()
        row["torch_eval"] = torch_eval_step(model, ckpt, ctx)
        row["seconds"]["torch_eval"] = time.perf_counter() - start
    del model, ckpt
    missing = serving_available()
    if args.bench == "off":
        row["bench"] = {"skipped": "--bench off"}
    elif missing:
        row["bench"] = {"skipped": f"serving skipped: this Python lacks {', '.join(missing)} (pip install "
                                   "'alexnet-serving[serve]'); training, export and evaluation ran without them"}
        ctx.log(row["bench"]["skipped"])
    else:
        start = time.perf_counter()
        row["bench"] = bench_step(version, ctx)
        row["seconds"]["bench"] = time.perf_counter() - start
    return row


# -- the report -------------------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    import torch

    from bench.roof import cpu_info

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    info = cpu_info()
    return f"{info.model} ({info.usable_cpus} cores)"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# Fashion-MNIST experiment (d2l, chapter \"Modern convolutional networks\")",
        "",
        f"`{report['command']}`",
        "",
        f"{report['started']}; {env['device']}; Python {env['python']}, torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}; data: {report['data']['train_images']} training / "
        f"{report['data']['test_images']} test images ({report['data']['source']}).",
        "",
        "Accuracies are fractions. *train* and *test (PyTorch)*: the last epoch's training average and its "
        "validation on the test images, centre crop, as the book's `train_ch6` prints them; *served*: the exported "
        "version through `alexnet-eval` (the service's decoding, crops and serving graph in ONNX Runtime); "
        "*ten-crop (PyTorch)*: the same weights on the device. examples/s: training steps only, all epochs "
        "(as the book times them).",
        "",
        "| network | recipe | epochs | train loss | train acc | test acc (PyTorch) | served: centre | served: ten-crop "
        "| ten-crop (PyTorch) | examples/s | device | book: loss / train / test / examples/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["runs"]:
        if "error" in row:
            lines.append(f"| {row['arch']} | {row['recipe']} | failed: {row['error']} |||||||||")
            continue
        t, e, b = row["training"], row["alexnet_eval"], row["book"]
        ten_torch = row.get("torch_eval", {}).get("ten_top1")
        lines.append(
            f"| {row['arch']} | {row['recipe']} | {t['epochs']} | {t['train_loss']:.3f} | {_pct(t['train_acc'])} | "
            f"{_pct(t['test_acc'])} ({t['test_images']}) | {_pct(e['center_top1'])} ({e['images']}) | "
            f"{_pct(e['ten_top1'])} | {_pct(ten_torch)} | {t['examples_per_s']:,.0f} | {row['device']} | "
            f"{b['loss']:.3f} / {b['train_acc']:.3f} / {b['test_acc']:.3f} / {b['examples_per_sec']:,.1f} |")
    for row in report["skipped"]:
        lines.append(f"| {row['arch']} | {row['recipe']} | skipped: {row['reason']} |||||||||")
    lines += ["", "Book: " + "; ".join(sorted({r["book"]["source"] for r in report["runs"] if "book" in r})), ""]
    served = [r for r in report["runs"] if r.get("bench", {}).get("levels")]
    if served:
        lines += ["## Served (alexnet-serve + alexnet-bench)", "",
                  "| network | recipe | path | crops | concurrency | images/s | p50 ms | p99 ms | errors |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in served:
            for lv in row["bench"]["levels"]:
                path = "v2 infer" if lv.get("target", "").endswith("v2") else "/predict"
                lines.append(f"| {row['arch']} | {row['recipe']} | {path} | {lv['crops']} | {lv['concurrency']} | "
                             f"{lv['images_per_s']:.1f} | {lv['p50_ms']:.0f} | {lv['p99_ms']:.0f} | {lv['errors']} |")
        lines.append("")
    for row in report["runs"]:
        bench = row.get("bench", {})
        if "skipped" in bench:
            lines.append(f"- {row['arch']} ({row['recipe']}): {bench['skipped']}")
    timing = [f"{r['arch']} ({r['recipe']}): " + ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
              for r in report["runs"] if "seconds" in r]
    if timing:
        lines += ["", "Seconds: " + "; ".join(timing) + f"; total {report['seconds']:.0f} s.", ""]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output: Path) -> None:
    for name, text in (("report.json", json.dumps(report, indent=2, default=str) + "\n"),
                       ("report.md", markdown(report))):
        tmp = output / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(output / name)


def environment(device: str) -> dict[str, Any]:
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "cuda": torch.version.cuda, "device": device_name(device)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        runs = parse_runs(args.arch, args.recipe, args.epochs)
        for name in ("subset", "eval_limit", "epochs", "max_steps_per_epoch"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ExperimentError(f"--{name.replace('_', '-')} must be at least 1")
        taken = [r.name for r in runs if (args.output / "runs" / r.name).exists()]
        if taken:
            raise ExperimentError(f"{args.output}/runs already holds {', '.join(taken)}: remove it or choose another "
                                  "--output (a run is never overwritten)")
        ctx = prepare(args, log)
    except (ExperimentError, DatasetError) as exc:
        print(f"experiment: error: {exc}", file=sys.stderr)
        return 2
    import torch

    device = device_name(args.device)
    report: dict[str, Any] = {
        "command": "python -m bench.experiment " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": environment(args.device),
        "data": {"source": args.data, "subset": args.subset, "test_images": ctx.eval_images,
                 "train_images": ctx.train_images, "eval_dir": str(ctx.eval_dir)},
        "runs": [], "skipped": [], "seconds": 0.0,
    }
    failed = 0
    for spec in runs:
        elapsed = time.perf_counter() - started
        if args.time_budget is not None and elapsed > args.time_budget:
            report["skipped"].append({"arch": spec.arch, "recipe": spec.recipe,
                                      "reason": f"time budget ({elapsed:.0f} s > {args.time_budget:.0f} s)"})
            log(f"skipping {spec.name}: {elapsed:.0f} s have passed (--time-budget {args.time_budget:.0f})")
            continue
        log(f"=== {spec.name} ===")
        try:
            row = run_one(spec, ctx, device)
        except Exception as exc:  # one network failing must not lose the others' results
            failed += 1
            row = {"arch": spec.arch, "recipe": spec.recipe, "name": spec.name, "error": f"{type(exc).__name__}: {exc}"}
            log(f"{spec.name} failed:\n{traceback.format_exc()}")
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        report["runs"].append(row)
        report["seconds"] = time.perf_counter() - started
        write_report(report, args.output)
        log(f"report: {args.output / 'report.md'}")
    report["seconds"] = time.perf_counter() - started
    write_report(report, args.output)
    print(markdown(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
