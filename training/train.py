"""`alexnet-train`: the paper's recipe (Krizhevsky et al. 2012, section 5) on an ImageNet-layout folder.

A plain recipe in the style of torchvision's references/classification/train.py. Defaults are the paper's:
SGD, batch 128, momentum 0.9, weight decay 5e-4, learning rate 0.01 divided by 10 when the validation
error stops improving, 90 epochs. One process by default (CUDA when there is one, CPU otherwise); several
GPUs or machines through ``torchrun`` (DDP: nccl on CUDA, gloo on CPU), e.g.::

    torchrun --standalone --nproc_per_node 8 -m training.train --data /data/imagenet --batch-size 16

``--batch-size`` is per process (as in torchvision's recipe): the paper's 128 on 8 GPUs is 16 each.
Every epoch writes ``last.pt`` (and ``best.pt`` by validation top-1) and appends a line to
``metrics.jsonl`` and ``metrics.csv`` in ``--output``; ``--resume DIR/last.pt`` continues exactly.

Other networks and the d2l book's recipe (training/architectures.py, training/recipes.py), e.g. the book's AlexNet
experiment on Fashion-MNIST read from its IDX files and kept on the device (training/device_data.py)::

    alexnet-train --data fashion-mnist:/usr/share/datasets/fashion-mnist --arch d2l-alexnet --recipe d2l
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from alexnet_store import Preprocessing, TrainingSummary
from alexnet_store.metadata import ColourLighting
from training import fashion_mnist, recipes
from training.architectures import (
    ARCHITECTURES,
    INIT_SCHEMES,
    ArchError,
    arch_spec,
    build_model,
    count_parameters,
    initialize,
    normalise_model_config,
)
from training.checkpoint import (
    CheckpointError,
    lighting_from_checkpoint,
    lighting_to_checkpoint,
    load_checkpoint,
    preprocessing_from_checkpoint,
    save_checkpoint,
)
from training.data import (
    DataConfig,
    DatasetError,
    Folders,
    Loaders,
    build_loaders,
    derive_seed,
    open_folders,
    pixel_statistics,
    subset_limits,
)
from training.device_data import mean_std as memory_mean_std
from training.device_data import memory_loaders
from training.labels import LabelsError, labels_for_classes
from training.presets import INTERPOLATION, NO_LIGHTING, crop_scheme, imagenet_lighting, imagenet_mean_std

METRIC_FIELDS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "images_per_s",
                 "epoch_time_s", "train_samples", "val_images", "time")
# Options a resumed run takes from its checkpoint, so that it continues the same run whatever the command line says.
RESUMED_OPTIONS = ("seed", "batch_size", "val_batch_size", "init", "no_grouping", "dropout", "pca_std", "pca",
                   "no_flip", "resize_size", "limit_train", "limit_val", "val_crops", "max_steps_per_epoch", "mean_std",
                   "mean_std_images", "momentum", "weight_decay", "lr", "lr_factor", "lr_patience", "warmup_epochs",
                   "arch", "recipe", "input_size", "width_divisor", "lr_schedule", "subset")
PCA_SOURCES = ("compute", "imagenet")  # --pca: the lighting's eigenvectors from the training set, or ImageNet's


class TrainError(RuntimeError):
    """A run that cannot start as asked (bad device, output folder in use, incompatible checkpoint...)."""


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def build_parser(recipe: str = "paper", arch: str = "alexnet") -> argparse.ArgumentParser:
    """The command line, its defaults those of `recipe` for network `arch` (what --help shows)."""
    r = recipes.recipe_for(recipe, arch)
    p = argparse.ArgumentParser(
        prog="alexnet-train",
        description="Train the AlexNet of Krizhevsky, Sutskever & Hinton (2012) with the paper's recipe on a "
                    "folder in the ImageNet layout (DATA/train/<class>/*.jpg, DATA/val/<class>/*.jpg), or another "
                    "network of the d2l book's chapter on modern CNNs (--arch) with the book's recipe (--recipe d2l) "
                    "on Fashion-MNIST (--data fashion-mnist:DIR). Defaults shown are those of --recipe and --arch "
                    f"as given (here: {recipe}, {arch}). Multi-GPU / multi-node: launch with torchrun (DDP), e.g. "
                    "'torchrun --standalone --nproc_per_node 8 -m training.train --data DATA --batch-size 16'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True,
                   help="a dataset root with train/ and val/ class folders, or fashion-mnist:DIR for the four "
                        "Fashion-MNIST IDX files (gzipped or not) in DIR; 'fashion-mnist' alone reads "
                        f"{fashion_mnist.DEFAULT_ROOT} (Debian's dataset-fashion-mnist package)")
    d.add_argument("--labels", type=Path, default=None,
                   help="human-readable class names: a TSV with columns index, wnid, name (like "
                        "imagenet_classes.tsv) or one name per line; default: the folder names (Fashion-MNIST: its "
                        "class names)")
    d.add_argument("--subset", type=int, default=None,
                   help="train on a class-balanced N images and validate on the same fraction of the validation/"
                        "test images (tests and CPU runs)")
    d.add_argument("--workers", type=int, default=_default_workers(),
                   help="DataLoader worker processes per process (image folders; Fashion-MNIST is augmented on the "
                        "device)")
    d.add_argument("--mean-std", choices=("imagenet", "compute", "none"), default=r.mean_std,
                   help="per-channel normalisation: ImageNet's mean/std, computed from the training images, or none "
                        "(pixels in [0, 1] as they are: the d2l book's ToTensor)")
    d.add_argument("--mean-std-images", type=int, default=10_000,
                   help="--mean-std compute or --pca compute on an image folder: use at most this many training "
                        "images (class-stratified; one pass computes both)")
    d.add_argument("--resize-size", type=int, default=r.resize_size,
                   help="shorter side, then the central square (paper: 256; d2l: the network's input size)")
    d.add_argument("--input-size", type=int, default=r.input_size,
                   help="the network's input: crops of this size from the resized square (equal sizes: the whole "
                        "image)")
    d.add_argument("--pca-std", type=float, default=r.pca_std,
                   help="std of the PCA colour augmentation's α (paper: 0.1; 0 turns it off)")
    d.add_argument("--pca", choices=PCA_SOURCES, default="compute",
                   help="the PCA colour augmentation's eigenvectors and eigenvalues: computed from the 3x3 covariance "
                        "of the training images' RGB pixels (the paper's; in the same pass as --mean-std compute), "
                        "or ImageNet's constants (fb.resnet.torch's). Grey data stored with one channel "
                        "(Fashion-MNIST) has no colour to light: it gets none unless imagenet is asked for")
    flip = d.add_mutually_exclusive_group()
    flip.add_argument("--no-flip", dest="no_flip", action="store_true", default=r.no_flip,
                      help="no random horizontal reflections (for data that is not mirror-symmetric, e.g. digits); "
                           "the exported crop scheme is then 'center' instead of the paper's ten crops")
    flip.add_argument("--flip", dest="no_flip", action="store_false", help="random horizontal reflections")
    d.add_argument("--val-crops", choices=("center", "ten"), default="center",
                   help="validation patches: the centre crop, or the paper's ten crops (softmax averaged; 10x slower)")
    d.add_argument("--limit-train", type=int, default=None, help="use at most N training images (smoke runs)")
    d.add_argument("--limit-val", type=int, default=None, help="use at most N validation images (smoke runs)")

    m = p.add_argument_group("model")
    m.add_argument("--arch", choices=tuple(ARCHITECTURES), default=arch,
                   help="the network: " + "; ".join(f"{a}: {s.summary}" for a, s in ARCHITECTURES.items()))
    m.add_argument("--init", choices=INIT_SCHEMES, default=r.init,
                   help="weight init: the paper's N(0, 0.01) (alexnet: biases 1 in conv2/4/5, fc6/7); Caffe's "
                        "(alexnet, biases 0.1); He-normal with zero biases; or Xavier-uniform (the d2l book's)")
    m.add_argument("--no-grouping", action="store_true",
                   help="alexnet: dense conv2/4/5 (torchvision's variant, 62.4 M parameters) instead of the paper's "
                        "two-GPU connectivity (groups=2, 61.0 M)")
    m.add_argument("--dropout", type=float, default=0.5,
                   help="dropout probability (alexnet, d2l-alexnet, vgg11: fc6 and fc7; nin: before its last block)")
    m.add_argument("--width-divisor", type=int, default=r.width_divisor,
                   help="vgg11: divide every convolution's channels by this (the d2l book trains ratio 4)")

    o = p.add_argument_group("recipe")
    o.add_argument("--recipe", choices=recipes.RECIPES, default=recipe,
                   help="the defaults of this group and of the data/model options: paper — "
                        f"{recipes.describe('paper')}; d2l — {recipes.describe('d2l')}")
    o.add_argument("--epochs", type=int, default=r.epochs, help="total epochs (paper: ~90, d2l: 10)")
    o.add_argument("--batch-size", type=int, default=r.batch_size, help="images per step and process")
    o.add_argument("--val-batch-size", type=int, default=None, help="validation batch (default: --batch-size)")
    o.add_argument("--lr", type=float, default=r.lr, help="initial learning rate")
    o.add_argument("--momentum", type=float, default=r.momentum, help="SGD momentum (paper: 0.9; d2l: none)")
    o.add_argument("--weight-decay", type=float, default=r.weight_decay, help="weight decay (paper: 0.0005; d2l: 0)")
    o.add_argument("--lr-schedule", choices=("plateau", "constant"), default=r.lr_schedule,
                   help="plateau: multiply the learning rate by --lr-factor when the validation top-1 error stops "
                        "improving (the paper's); constant (the d2l book's)")
    o.add_argument("--lr-factor", type=float, default=0.1,
                   help="multiply the learning rate by this when validation top-1 error stops improving (paper: 0.1)")
    o.add_argument("--lr-patience", type=int, default=5,
                   help="epochs without improvement of the validation error before the learning rate drops")
    o.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="raise the learning rate linearly from 0 to --lr over this many epochs (not in the paper; "
                        "keeps a large network from stalling at chance on small data sets)")
    o.add_argument("--max-steps-per-epoch", type=int, default=None, help="stop each epoch after N steps (smoke runs)")

    g = p.add_argument_group("run")
    g.add_argument("--output", type=Path, default=None,
                   help="folder for checkpoints and metrics (default: runs/<arch>, or the folder of --resume)")
    g.add_argument("--resume", type=Path, default=None,
                   help="continue from a checkpoint (DIR/last.pt): model, optimizer, scheduler, epoch, history, "
                        "seeds and the recipe options come from it; --epochs may be raised")
    g.add_argument("--seed", type=int, default=0, help="seed of the init, data order, augmentation and dropout")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available, else CPU")
    g.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                   help="bf16 autocast; auto: on CUDA only (CPUs without native bf16 run it many times slower)")
    g.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="NHWC memory format; auto: on CUDA only")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms on CUDA too (slower; CPU runs are deterministic anyway)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines are still printed)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse with the defaults of the --recipe and --arch on the command line; absent, those of the run being
    resumed (so `--resume DIR/last.pt` of a d2l run trains to the d2l recipe's 10 epochs), else paper and alexnet."""
    first = argparse.ArgumentParser(prog="alexnet-train", add_help=False)
    first.add_argument("--recipe", choices=recipes.RECIPES, default=None)
    first.add_argument("--arch", choices=tuple(ARCHITECTURES), default=None)
    first.add_argument("--resume", type=Path, default=None)
    known, _rest = first.parse_known_args(argv)
    recorded: dict[str, Any] = {}
    if known.resume is not None and (known.recipe is None or known.arch is None):
        with contextlib.suppress(CheckpointError):  # run() reports an unreadable checkpoint
            recorded = load_checkpoint(known.resume).get("args") or {}
    recipe = known.recipe or recorded.get("recipe", "paper")
    arch = known.arch or recorded.get("arch", "alexnet")
    return build_parser(recipe, arch).parse_args(argv)


# ------------------------------------------------------------------------------------------------ runtime setup
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp: bool = False
    channels_last: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(args: argparse.Namespace) -> Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise TrainError("--device cuda: no CUDA device is available to PyTorch here (use --device auto or cpu)")
    use_cuda = args.device == "cuda" or (args.device == "auto" and cuda)
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise TrainError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                device_id=device if use_cuda else None)
    if args.amp == "bf16" and use_cuda and not torch.cuda.is_bf16_supported():
        raise TrainError("--amp bf16: this GPU has no bfloat16 support (use --amp off)")
    amp = args.amp == "bf16" or (args.amp == "auto" and use_cuda and torch.cuda.is_bf16_supported())
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and use_cuda)
    if use_cuda:
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; bf16 autocast is the fast path
        torch.backends.cudnn.allow_tf32 = False
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    return Runtime(device, rank, world_size, local_rank, amp, channels_last)


def _all_reduce(values: Sequence[float], rt: Runtime) -> list[float]:
    t = torch.tensor(list(values), dtype=torch.float64, device=rt.device)
    if rt.distributed:
        dist.all_reduce(t)
    return t.tolist()


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every generator the main process draws from in this epoch (dropout, mainly) from (seed, epoch, rank)."""
    s = derive_seed(seed, epoch, rank, 0xD50)
    torch.manual_seed(s)  # CPU and every CUDA device
    random.seed(s)
    np.random.seed(s % 2**32)


def rng_states() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }


def restore_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


# ---------------------------------------------------------------------------------------------------- the loop
def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.SGD:
    """SGD on every weight and bias: the paper's momentum 0.9 and weight decay 0.0005, or the book's plain SGD."""
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace,
                    ) -> torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The paper's: divide the learning rate by 10 when the validation error stops improving (stepped with top-1
    *error*). None for the d2l book's constant rate."""
    if args.lr_schedule == "constant":
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=args.lr_factor,
                                                      patience=args.lr_patience)


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == target[:, None]
    return hit[:, 0].sum(), hit.any(dim=1).sum()


def _autocast(rt: Runtime) -> contextlib.AbstractContextManager:
    if not rt.amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=rt.device.type, dtype=torch.bfloat16)


def _to_device(x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(rt.device, non_blocking=True)
    if rt.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(rt.device, non_blocking=True)


def warmup_lr(base_lr: float, warmup_epochs: float, epoch: int, step: int, steps: int) -> float | None:
    """Linear warm-up to `base_lr` over the first `warmup_epochs` (None once it is over).

    A function of (epoch, step) alone, so a resumed run gets the same learning rates.
    """
    done = (epoch + (step + 1) / steps) / warmup_epochs if warmup_epochs > 0 else 1.0
    return base_lr * done if done < 1.0 else None


def train_one_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, rt: Runtime, epoch: int,
                    epochs: int, max_steps: int | None, progress: bool, base_lr: float = 0.0,
                    warmup_epochs: float = 0.0) -> dict[str, float]:
    """One pass over the training data; `epoch` counts from 1."""
    model.train()
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    in_warmup = warmup_epochs > epoch - 1
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    seen = 0
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="step", dynamic_ncols=True, leave=False,
               disable=not (progress and rt.main))
    start = last_update = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step >= steps:
            break
        x, y = _to_device(x, y, rt)
        if in_warmup:
            lr = warmup_lr(base_lr, warmup_epochs, epoch - 1, step, steps)
            for group in optimizer.param_groups:
                group["lr"] = base_lr if lr is None else lr
        with _autocast(rt):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = y.shape[0]
        seen += n
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(dim=1) == y).sum()
        bar.update(1)
        now = time.perf_counter()
        if bar.disable is False and (now - last_update > 0.5 or step == steps - 1):
            last_update = now
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.1f}%",
                            img_s=f"{seen * rt.world_size / (now - start):.1f}")
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    elapsed = time.perf_counter() - start
    bar.close()
    loss_total, correct_total, samples = _all_reduce([loss_sum.item(), correct.item(), seen], rt)
    samples = max(samples, 1)
    return {"train_loss": loss_total / samples, "train_top1": correct_total / samples, "train_samples": int(samples),
            "images_per_s": samples / elapsed if elapsed > 0 else float("nan"), "train_time_s": elapsed}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Any, rt: Runtime, progress: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 over the validation set (each process its shard, summed across processes).

    With ten crops per image ([N, 10, 3, H, W] batches) the softmax is averaged over the crops, as in the paper.
    """
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    c1 = torch.zeros((), dtype=torch.int64, device=rt.device)
    c5 = torch.zeros((), dtype=torch.int64, device=rt.device)
    seen = 0
    for x, y in tqdm(loader, desc="val", unit="step", dynamic_ncols=True, leave=False,
                     disable=not (progress and rt.main)):
        crops = x.shape[1] if x.dim() == 5 else 0
        if crops:
            x = x.flatten(0, 1)
        x, y = _to_device(x, y, rt)
        with _autocast(rt):
            logits = model(x).float()
        if crops:
            probs = logits.softmax(dim=1).view(y.shape[0], crops, -1).mean(dim=1)
            loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").double()
            scores = probs
        else:
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            scores = logits
        a1, a5 = accuracy_counts(scores, y)
        c1 += a1
        c5 += a5
        seen += y.shape[0]
    loss_total, c1_total, c5_total, n = _all_reduce([loss_sum.item(), c1.item(), c5.item(), seen], rt)
    n = max(n, 1)
    return {"val_loss": loss_total / n, "val_top1": c1_total / n, "val_top5": c5_total / n, "val_images": int(n)}


# ------------------------------------------------------------------------------------------- metrics + outputs
def write_metrics(output: Path, history: Sequence[dict[str, Any]], append: bool) -> None:
    """metrics.jsonl and metrics.csv: one line per epoch. `append` adds history[-1]; otherwise rewrite all."""
    jsonl, csv_path = output / "metrics.jsonl", output / "metrics.csv"
    rows = history[-1:] if append else history
    mode = "a" if append else "w"
    with open(jsonl, mode) as fh:
        for row in rows:
            fh.write(json.dumps({k: row.get(k) for k in METRIC_FIELDS}) + "\n")
    new_csv = not append or not csv_path.exists()
    with open(csv_path, "w" if not append else "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        if new_csv:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in METRIC_FIELDS})


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
            for k, v in model.state_dict().items()}


def _summary(dataset: str, epochs: int, train_images: int, val_images: int, row: dict[str, Any],
             best_epoch: int | None) -> dict[str, Any]:
    summary = dataclasses.asdict(TrainingSummary(
        dataset=dataset, epochs=epochs, train_images=train_images, val_images=val_images,
        val_top1=row["val_top1"], val_top5=row["val_top5"], best_epoch=best_epoch,
    ))
    del summary["lighting"]  # the checkpoint's own `lighting` entry; without the key, older exports read it too
    return summary


def _link_or_copy(src: Path, dst: Path, state: dict[str, Any]) -> None:
    """best.pt = last.pt: a hard link (no second write) replaced atomically; a full save where links fail."""
    tmp = dst.with_name(f".{dst.name}.link-{os.getpid()}")
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        save_checkpoint(dst, state)


@dataclass
class TrainResult:
    """What a caller of `run` uses: the last checkpoint and the per-epoch metrics."""

    last: Path
    history: list[dict[str, Any]]


def _namespace_record(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def _apply_resumed_options(args: argparse.Namespace, recorded: dict[str, Any], log: Callable[[str], None]) -> None:
    for key in RESUMED_OPTIONS:
        if key in recorded and getattr(args, key) != recorded[key]:
            log(f"resume: keeping the checkpoint's {key}={recorded[key]!r} (command line: {getattr(args, key)!r})")
            setattr(args, key, recorded[key])


def _validate(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size", "lr_patience"):
        if getattr(args, name) < (0 if name == "lr_patience" else 1):
            raise TrainError(f"--{name.replace('_', '-')} must be positive (got {getattr(args, name)})")
    if args.warmup_epochs < 0:
        raise TrainError("--warmup-epochs must be 0 or more")
    if args.workers < 0:
        raise TrainError("--workers must be 0 or more")
    if not 0 <= args.dropout < 1:
        raise TrainError("--dropout must be in [0, 1)")
    if args.lr <= 0 or not 0 < args.lr_factor < 1:
        raise TrainError("--lr must be positive and --lr-factor in (0, 1)")
    if args.momentum < 0 or args.weight_decay < 0:
        raise TrainError("--momentum and --weight-decay must be 0 or more")
    if args.max_steps_per_epoch is not None and args.max_steps_per_epoch < 1:
        raise TrainError("--max-steps-per-epoch must be at least 1")
    if args.input_size < 1 or args.resize_size < args.input_size:
        raise TrainError(f"--resize-size ({args.resize_size}) must be at least --input-size ({args.input_size})")
    if args.subset is not None and (args.subset < 1 or args.limit_train is not None or args.limit_val is not None):
        raise TrainError("--subset must be at least 1 and replaces --limit-train/--limit-val (give one or the other)")
    if args.no_grouping and args.arch != "alexnet":
        raise TrainError("--no-grouping applies to --arch alexnet only")
    if args.width_divisor < 1 or (args.width_divisor != 1 and args.arch != "vgg11"):
        raise TrainError("--width-divisor applies to --arch vgg11 only, and must be at least 1")
    if args.init == "caffe" and args.arch != "alexnet":
        raise TrainError("--init caffe is the paper's alexnet's (its biases 0.1); use paper, kaiming or xavier")


def model_config(args: argparse.Namespace, num_classes: int) -> dict[str, Any]:
    """What the checkpoint records to rebuild the network (`training.architectures.model_from_config`)."""
    spec = arch_spec(args.arch)
    options = {"grouped": not args.no_grouping, "dropout": args.dropout, "width_divisor": args.width_divisor}
    return normalise_model_config({"arch": args.arch, "num_classes": num_classes, "in_channels": spec.in_channels,
                                   **{k: v for k, v in options.items() if k in spec.options}})


@dataclass
class TrainingData:
    """What a run trains on: an ImageNet-layout folder (decoded by DataLoader workers) or Fashion-MNIST in memory."""

    name: str  # recorded as the training summary's dataset
    root: Path
    classes: list[str]  # label ids in class-index order
    names: list[str] | None  # their human names, when the data set has them
    train_count: int
    val_count: int
    folders: Folders | None = None
    memory: fashion_mnist.FashionMNIST | None = None


def open_data(spec: str | Path) -> TrainingData:
    """`--data`: ``fashion-mnist[:DIR]`` or a folder; DatasetError (IdxError included) when it is unusable."""
    root = fashion_mnist.parse_spec(str(spec))
    if root is not None:
        data = fashion_mnist.load(root)
        return TrainingData(fashion_mnist.SCHEME, root, list(data.classes), list(data.names), len(data.train.labels),
                            len(data.test.labels), memory=data)
    folders = open_folders(spec)
    return TrainingData(folders.root.resolve().name, folders.root, folders.classes, None, len(folders.train),
                        len(folders.val), folders=folders)


def _statistics(args: argparse.Namespace, data: TrainingData, in_channels: int, rt: Runtime,
                logm: Callable[[str], None]) -> tuple[tuple[float, ...], tuple[float, ...], ColourLighting]:
    """The normalisation (--mean-std) and the PCA colour lighting (--pca-std, --pca) of a new run. What is computed
    comes from one pass over the training images: the per-channel mean/std and the RGB covariance's eigenvectors."""
    grey = data.memory is not None  # Fashion-MNIST: one stored channel; image folders decode to RGB
    compute_pca = args.pca_std > 0 and args.pca == "compute" and not grey
    stats: list[Any] = [None]
    if (args.mean_std == "compute" or compute_pca) and data.folders is not None:
        if rt.main:
            logm(f"computing the {'per-channel mean/std and ' if args.mean_std == 'compute' else ''}RGB pixel "
                 f"covariance of up to {args.mean_std_images} training images ...")
            stats[0] = pixel_statistics(data.folders.train, args.resize_size, args.mean_std_images, args.seed,
                                        workers=args.workers, progress=not args.no_progress, in_channels=in_channels)
        if rt.distributed:
            dist.broadcast_object_list(stats, src=0)
    if args.mean_std == "none":
        mean, std = (0.0,) * in_channels, (1.0,) * in_channels
    elif args.mean_std == "imagenet":
        mean, std = imagenet_mean_std(in_channels)
    elif grey:  # every process computes the same numbers from the same array, in a moment
        mean, std = memory_mean_std(torch.from_numpy(data.memory.train.images[:, None]), in_channels)
    else:
        mean, std = stats[0].mean, stats[0].std
    if args.pca_std <= 0:
        lighting = NO_LIGHTING
    elif args.pca == "imagenet":
        lighting = imagenet_lighting(args.pca_std)
    elif grey:
        lighting = NO_LIGHTING
        logm(f"PCA colour lighting: none — {data.name} is grey (one channel): the covariance of its replicated RGB "
             "pixels has one component, brightness, and no colour (--pca imagenet applies ImageNet's)")
    else:
        lighting = stats[0].lighting(args.pca_std)
    if lighting.eigen == "computed":
        logm(f"PCA colour lighting from {lighting.images} training images: eigenvalues "
             f"{', '.join(f'{v:.4g}' for v in lighting.eigval)}; α ~ N(0, {lighting.alpha_std:g})")
    return mean, std, lighting


def _loaders(data: TrainingData, cfg: DataConfig, rt: Runtime) -> Loaders:
    if data.memory is not None:
        return memory_loaders(data.memory.train, data.memory.test, cfg, rt.device)
    return build_loaders(data.folders, cfg)


def run(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train as `args` say (the parsed command line); returns where the checkpoints and metrics are.

    Raises DatasetError, LabelsError, CheckpointError or TrainError for inputs that cannot work.
    """
    log = log or print
    resume_ckpt = load_checkpoint(args.resume) if args.resume else None
    if resume_ckpt is not None:
        if "optimizer_state" not in resume_ckpt or "args" not in resume_ckpt:
            raise CheckpointError(f"{args.resume} has no optimizer state: it cannot be resumed")
        _apply_resumed_options(args, resume_ckpt["args"], log)
    _validate(args)
    output = args.output or (args.resume.parent if args.resume else Path("runs") / args.arch)
    if resume_ckpt is None and (output / "last.pt").exists():  # checked on every process: none may start alone
        raise TrainError(f"{output} already holds a run (last.pt); continue it with --resume {output}/last.pt "
                         "or choose another --output")
    args.output = output
    rt = setup_runtime(args)
    logm = log if rt.main else (lambda _m: None)
    try:
        return _run(args, rt, resume_ckpt, log, logm)
    finally:
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _run(args: argparse.Namespace, rt: Runtime, resume_ckpt: dict[str, Any] | None,
         log: Callable[[str], None], logm: Callable[[str], None]) -> TrainResult:
    progress = not args.no_progress
    output: Path = args.output
    if rt.main:
        output.mkdir(parents=True, exist_ok=True)

    data = open_data(args.data)
    classes = data.classes
    labels = labels_for_classes(classes, args.labels, data.names)
    in_channels = arch_spec(args.arch).in_channels
    if resume_ckpt is not None:
        if resume_ckpt.get("classes") != classes:
            raise CheckpointError(f"{args.resume} was trained on other classes than {args.data} has")
        resumed = preprocessing_from_checkpoint(resume_ckpt)
        mean, std = resumed.mean, resumed.std
        lighting = lighting_from_checkpoint(resume_ckpt) or imagenet_lighting(args.pca_std)
        if "lighting" not in resume_ckpt and lighting.eigen == "imagenet":
            logm("resume: the checkpoint predates the PCA lighting record; keeping ImageNet's constants, as it was "
                 "trained")
            args.pca = "imagenet"
    else:
        mean, std, lighting = _statistics(args, data, in_channels, rt, logm)

    limit_train, limit_val = args.limit_train, args.limit_val
    if args.subset is not None:
        limit_train, limit_val = subset_limits(args.subset, data.train_count, data.val_count, len(classes))
    cfg = DataConfig(root=data.root, batch_size=args.batch_size, val_batch_size=args.val_batch_size,
                     workers=args.workers, seed=args.seed, mean=tuple(mean), std=tuple(std),
                     resize_size=args.resize_size, crop_size=args.input_size, lighting=lighting,
                     flip=not args.no_flip, val_crops=args.val_crops, limit_train=limit_train, limit_val=limit_val,
                     pin_memory=rt.device.type == "cuda", rank=rt.rank, world_size=rt.world_size,
                     in_channels=in_channels)
    loaders = _loaders(data, cfg, rt)
    preprocessing = dataclasses.asdict(Preprocessing(
        resize_size=args.resize_size, crop_size=args.input_size, mean=tuple(mean), std=tuple(std),
        interpolation=INTERPOLATION, crops=crop_scheme(flip=not args.no_flip), input_channels=in_channels))
    preprocessing = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocessing.items()}

    torch.manual_seed(derive_seed(args.seed, 0x1A17))  # the same init on every process (DDP broadcasts rank 0's too)
    config = model_config(args, len(classes))
    model = build_model(**config)
    initialize(model, args.init)
    if resume_ckpt is not None:
        recorded = normalise_model_config(resume_ckpt["model_config"])
        if recorded != config:
            raise CheckpointError(f"{args.resume}: model {recorded} differs from {config}")
        model.load_state_dict(resume_ckpt["model_state"])
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if rt.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device.type == "cuda"
                                                  else None)
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args)
    start_epoch, history, best = 0, [], {"epoch": None, "val_top1": -1.0}
    if resume_ckpt is not None:
        optimizer.load_state_dict(resume_ckpt["optimizer_state"])
        if scheduler is not None:
            scheduler.load_state_dict(resume_ckpt["scheduler_state"])
        start_epoch, history, best = resume_ckpt["epoch"], list(resume_ckpt["history"]), dict(resume_ckpt["best"])
        restore_rng_states(resume_ckpt["rng"])
        if rt.main:
            write_metrics(output, history, append=False)  # drop lines of epochs after the checkpoint, if any
        logm(f"resumed from {args.resume} after epoch {start_epoch} (lr {optimizer.param_groups[0]['lr']:g})")

    sizes = (loaders.train_images, loaders.val_images)  # what was used (after --subset/--limit-*)
    grouping = "" if args.arch != "alexnet" else f"{'grouped' if model.grouped else 'ungrouped'}, "
    logm(f"{args.arch} ({grouping}{count_parameters(model):,} parameters, init {args.init}) on {rt.device}"
         f"{f' × {rt.world_size} processes' if rt.distributed else ''}, amp {'bf16' if rt.amp else 'off'}, "
         f"channels_last {'on' if rt.channels_last else 'off'}; {data.name}: {len(classes)} classes, "
         f"{loaders.train_images} train / {loaders.val_images} val images, {args.input_size}×{args.input_size} "
         f"{'crops of ' + str(args.resize_size) if args.input_size < args.resize_size else 'resized'}; "
         f"{args.recipe} recipe: batch {args.batch_size}{' per process' if rt.distributed else ''}, lr {args.lr:g} "
         f"({args.lr_schedule}), momentum {args.momentum:g}, weight decay {args.weight_decay:g}"
         f"{f', {args.workers} workers' if data.folders is not None else ', data on ' + str(rt.device)}")
    if rt.distributed:
        # One line per process, so a launch shows that every rank came up.
        log(f"[rank {rt.rank}/{rt.world_size}] {rt.device}, backend {dist.get_backend()}, "
            f"{len(loaders.train_sampler)} training samples per epoch on this rank")
    last_path, best_path = output / "last.pt", output / "best.pt"
    if start_epoch >= args.epochs:
        logm(f"already trained {start_epoch} epochs (--epochs {args.epochs}); nothing to do")

    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.perf_counter()
        seed_epoch(args.seed, epoch, rt.rank)
        loaders.train_sampler.set_epoch(epoch)
        train_stats = train_one_epoch(net, loaders.train, optimizer, rt, epoch + 1, args.epochs,
                                      args.max_steps_per_epoch, progress, args.lr, args.warmup_epochs)
        lr = optimizer.param_groups[0]["lr"]  # the rate of the epoch's last step
        val_stats = evaluate(model, loaders.val, rt, progress)
        if scheduler is not None:
            scheduler.step(1.0 - val_stats["val_top1"])  # the validation top-1 *error*
        row = {"epoch": epoch + 1, **train_stats, **val_stats, "lr": lr,
               "epoch_time_s": time.perf_counter() - epoch_start,
               "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        history.append(row)
        is_best = row["val_top1"] > best["val_top1"]
        if is_best:
            best = {"epoch": epoch + 1, "val_top1": row["val_top1"]}
        if rt.main:
            state = {
                "model_config": config, "model_state": _model_state(model),
                "labels": [[lab.id, lab.name] for lab in labels], "classes": classes,
                "preprocessing": preprocessing, "lighting": lighting_to_checkpoint(lighting),
                "summary": _summary(data.name, epoch + 1, *sizes, row, best["epoch"]),
                "epoch": epoch + 1, "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
                "best": best, "history": history,
                "args": _namespace_record(args), "init": args.init, "rng": rng_states(),
                "world_size": rt.world_size,
            }
            save_checkpoint(last_path, state)
            if is_best:
                _link_or_copy(last_path, best_path, state)
            write_metrics(output, history, append=True)
            logm(f"epoch {epoch + 1}/{args.epochs}: train loss {row['train_loss']:.4f} top-1 "
                 f"{100 * row['train_top1']:.1f}% | val loss {row['val_loss']:.4f} top-1 {100 * row['val_top1']:.2f}% "
                 f"top-5 {100 * row['val_top5']:.2f}% | lr {lr:g} | {row['images_per_s']:.1f} img/s | "
                 f"{row['epoch_time_s']:.1f} s{' *' if is_best else ''}")
        if not math.isfinite(row["train_loss"]):
            raise TrainError(f"the training loss is {row['train_loss']} at epoch {epoch + 1}: lower --lr")
    if rt.distributed:
        dist.barrier()
    return TrainResult(last_path, history)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (DatasetError, LabelsError, CheckpointError, TrainError, ArchError) as exc:
        print(f"alexnet-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alexnet-train: interrupted; continue with --resume <output>/last.pt", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
