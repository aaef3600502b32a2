"""Image folders in the ImageNet layout, and the DataLoaders that feed training.

A dataset is a folder ``<root>/train/<class>/*`` and ``<root>/val/<class>/*``; classes are the folder
names in sorted order (torchvision's ``ImageFolder``), and train and val must have the same ones.

Reproducibility: every random draw of an epoch is a function of ``(seed, epoch)`` only —
- the order: ``DistributedSampler(seed=seed)`` with ``set_epoch(epoch)`` (also with one process);
- the augmentation of each image: the sampler hands every index over with its own seed, derived from
  ``(seed, epoch, index)``, and the dataset seeds torch's generator with it before the random crop, flip and
  PCA lighting.
So a run gives the same batches whatever ``--workers`` is (0 or 16, persistent or not), the same images
are augmented the same way under DDP whatever the number of processes, and a run resumed at an epoch
boundary draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from alexnet_store.metadata import LUMA_WEIGHTS, ColourLighting
from training.presets import IMAGENET_MEAN, IMAGENET_STD, center_transform, ten_crop_transform, train_transform


class DatasetError(ValueError):
    """The data folder is not a usable ImageNet-layout dataset; the message says what to fix."""


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, index, ...): nearby inputs give unrelated streams."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0]
               & 0x7FFFFFFFFFFFFFFF)


class ClassFolder(ImageFolder):
    """`ImageFolder` that ignores hidden folders (``.ipynb_checkpoints``, ``.DS_Store``-style debris)."""

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DatasetError(f"{directory} has no class folders (expected {directory}/<class>/<image files>)")
        return classes, {c: i for i, c in enumerate(classes)}


def open_split(root: Path, split: str) -> ClassFolder:
    folder = root / split
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not folder.is_dir():
        raise DatasetError(
            f"{root} has no {split}/ folder: expected the ImageNet layout {root}/train/<class>/<images> and "
            f"{root}/val/<class>/<images>"
        )
    ds = ClassFolder(str(folder), allow_empty=True)
    counts = np.bincount(np.asarray(ds.targets, dtype=np.int64), minlength=len(ds.classes))
    empty = [c for c, n in zip(ds.classes, counts, strict=True) if n == 0]
    if empty:
        shown = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise DatasetError(
            f"{folder}: {len(empty)} class folder(s) hold no images ({shown}); image files must end in "
            f"{', '.join(IMG_EXTENSIONS)}"
        )
    return ds


@dataclass
class Folders:
    """The two splits of a dataset, checked against each other; no transforms yet."""

    root: Path
    train: ClassFolder
    val: ClassFolder

    @property
    def classes(self) -> list[str]:
        return list(self.train.classes)


def open_folders(root: str | os.PathLike[str]) -> Folders:
    root = Path(root)
    train, val = open_split(root, "train"), open_split(root, "val")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DatasetError(
            f"{root}: train/ and val/ must have the same class folders (class indices come from the sorted "
            f"names); only in train: {only_train[:10] or 'none'}, only in val: {only_val[:10] or 'none'}"
        )
    return Folders(root, train, val)


def stratified_subset(targets: Sequence[int], limit: int | None, seed: int) -> list[int]:
    """Up to `limit` indices taking classes in turn (a seeded shuffle within each class); all when None."""
    if limit is None or limit >= len(targets):
        return list(range(len(targets)))
    if limit < 1:
        raise DatasetError(f"a dataset limit must be at least 1 (got {limit})")
    gen = torch.Generator().manual_seed(derive_seed(seed, 0x5B5E7))
    order = torch.randperm(len(targets), generator=gen).tolist()
    per_class: dict[int, list[int]] = {}
    for i in order:
        per_class.setdefault(int(targets[i]), []).append(i)
    groups = [per_class[c] for c in sorted(per_class)]
    picked: list[int] = []
    for rank in range(max(len(g) for g in groups)):
        picked += [g[rank] for g in groups if rank < len(g)]
        if len(picked) >= limit:
            break
    return sorted(picked[:limit])


def subset_limits(subset: int, train_count: int, val_count: int, classes: int) -> tuple[int, int]:
    """`--subset N`: N training images and the validation images in the data set's own proportion (at least one
    per class): Fashion-MNIST's 60,000/10,000 gives 2,000 → 333."""
    return subset, max(classes, round(subset * val_count / max(train_count, 1)))


class SeededAugmentation(Dataset):
    """Applies `transform` with torch's generator seeded per sample: keys are ``(index, seed)`` pairs.

    The caller's generator state is restored afterwards, so with ``num_workers=0`` the main process's
    random stream (dropout) is not disturbed.
    """

    def __init__(self, base: Dataset, transform: Any) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        image, target = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), target


class Transformed(Dataset):
    """A deterministic transform over a dataset that yields (PIL image, target)."""

    def __init__(self, base: Dataset, transform: Any) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.base[index]
        return self.transform(image), target


class SeededSampler(Sampler[tuple[int, int]]):
    """`DistributedSampler`'s order for this rank, each index paired with its augmentation seed."""

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.seed = seed
        self.inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                        drop_last=False)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.inner:
            yield index, derive_seed(self.seed, self.epoch, index)


class ShardSampler(Sampler[int]):
    """Every `world_size`-th index from `rank`: each sample evaluated exactly once across processes (no padding)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


@dataclass
class DataConfig:
    root: Path
    batch_size: int = 128
    val_batch_size: int | None = None
    workers: int = 4
    seed: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_size: int = 256
    crop_size: int = 224
    lighting: ColourLighting | None = None  # PCA colour lighting (training/presets.py); None: none
    flip: bool = True
    val_crops: str = "center"  # "center" or "ten"
    in_channels: int = 3  # the network's: 1 gives it the luma of the RGB images
    limit_train: int | None = None
    limit_val: int | None = None
    pin_memory: bool = False
    rank: int = 0
    world_size: int = 1


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    train_sampler: SeededSampler
    train_images: int
    val_images: int


def _loader_kwargs(cfg: DataConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_workers": cfg.workers, "pin_memory": cfg.pin_memory}
    if cfg.workers > 0:
        kwargs |= {"persistent_workers": True, "prefetch_factor": 4}
    return kwargs


def build_loaders(folders: Folders, cfg: DataConfig) -> Loaders:
    """Training and validation DataLoaders for this process (its shard under DDP)."""
    train_base = Subset(folders.train, stratified_subset(folders.train.targets, cfg.limit_train, cfg.seed))
    val_base = Subset(folders.val, stratified_subset(folders.val.targets, cfg.limit_val, cfg.seed))
    train_ds = SeededAugmentation(train_base, train_transform(cfg.mean, cfg.std, cfg.resize_size, cfg.crop_size,
                                                              lighting=cfg.lighting, flip=cfg.flip,
                                                              in_channels=cfg.in_channels))
    if cfg.val_crops == "ten":
        val_tf = ten_crop_transform(cfg.mean, cfg.std, cfg.resize_size, cfg.crop_size, cfg.in_channels)
    elif cfg.val_crops == "center":
        val_tf = center_transform(cfg.mean, cfg.std, cfg.resize_size, cfg.crop_size, cfg.in_channels)
    else:
        raise ValueError(f"val_crops must be 'center' or 'ten', not {cfg.val_crops!r}")
    val_ds = Transformed(val_base, val_tf)
    sampler = SeededSampler(train_ds, cfg.seed, cfg.rank, cfg.world_size)
    kwargs = _loader_kwargs(cfg)
    # The loaders' own generators only seed worker processes, whose streams are unused (every random draw is
    # seeded per sample); giving them fixed generators keeps the main process's stream untouched.
    train = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=False,
                       generator=torch.Generator().manual_seed(cfg.seed), **kwargs)
    val = DataLoader(val_ds, batch_size=cfg.val_batch_size or cfg.batch_size,
                     sampler=ShardSampler(len(val_ds), cfg.rank, cfg.world_size),
                     generator=torch.Generator().manual_seed(cfg.seed), **kwargs)
    return Loaders(train, val, sampler, len(train_ds), len(val_ds))


@dataclass(frozen=True)
class PixelStatistics:
    """What one pass over the training pixels gives: the per-channel mean and std the network normalises with (RGB,
    or the luma for 1 channel) and the eigen-decomposition of the 3×3 covariance of the RGB pixel values, which the
    paper's PCA colour lighting adds along (eigenvalues descending; column j of `eigvec` belongs to `eigval[j]`)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    eigval: tuple[float, float, float]
    eigvec: tuple[tuple[float, float, float], ...]
    images: int

    def lighting(self, alpha_std: float) -> ColourLighting:
        return ColourLighting(eigen="computed", alpha_std=alpha_std, eigval=self.eigval, eigvec=self.eigvec,
                              images=self.images)


def principal_components(cov: torch.Tensor) -> tuple[tuple[float, float, float], tuple[tuple[float, ...], ...]]:
    """Eigenvalues (descending, never negative) and unit eigenvectors (columns) of a 3×3 covariance matrix. Each
    vector's sign is fixed (its largest component positive): the lighting is symmetric in it, the record is not."""
    values, vectors = torch.linalg.eigh(cov.to(torch.float64))  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(dim=0, keepdim=True)))
    vectors = vectors * signs
    r = lambda v: round(float(v), 8)  # noqa: E731
    return (tuple(r(v) for v in values),  # type: ignore[return-value]
            tuple(tuple(r(v) for v in row) for row in vectors))


def pixel_statistics(dataset: ImageFolder, resize_size: int = 256, max_images: int | None = 10_000, seed: int = 0,
                     workers: int = 0, progress: bool = True, in_channels: int = 3) -> PixelStatistics:
    """Mean/std and the RGB covariance's principal components of the training images' pixels (in [0, 1]) as the
    network sees them, in one pass.

    Each image is resized and centre-cropped to ``resize_size``² (the paper's 256×256 images); a seeded,
    class-stratified subset of at most `max_images` images is used (all when None). The pass sums the RGB values
    and their 3×3 products (float64); a 1-channel network's luma mean and std follow exactly from those (the luma is
    linear in RGB: mean w·μ, variance wᵀΣw). The paper computes the PCA over all of ImageNet's training pixels; 10,000
    images of 256² are 655 M pixels, and a 3×3 covariance is settled long before that.
    """
    indices = stratified_subset(dataset.targets, max_images, seed)
    tf = center_transform((0.0,) * 3, (1.0,) * 3, resize_size, resize_size, 3)
    loader = DataLoader(Transformed(Subset(dataset, indices), tf), batch_size=64, num_workers=workers)
    total = torch.zeros(3, dtype=torch.float64)
    products = torch.zeros(3, 3, dtype=torch.float64)
    count = 0
    for x, _ in tqdm(loader, desc="mean/std/PCA", unit="batch", disable=not progress, leave=False):
        pixels = x.to(torch.float64).transpose(0, 1).reshape(3, -1)  # [3, N·H·W]
        total += pixels.sum(dim=1)
        products += pixels @ pixels.T
        count += pixels.shape[1]
    mean = total / count
    cov = products / count - torch.outer(mean, mean)
    if in_channels == 3:
        channel_mean, channel_var = mean, cov.diagonal()
    elif in_channels == 1:
        w = torch.tensor(LUMA_WEIGHTS, dtype=torch.float64)
        channel_mean, channel_var = (w @ mean).reshape(1), (w @ cov @ w).reshape(1)
    else:
        raise ValueError(f"in_channels must be 1 or 3, not {in_channels}")
    std = channel_var.clamp_min(0).sqrt().clamp_min(1e-3)  # a constant channel must not divide by zero
    as_tuple = lambda t: tuple(round(float(v), 6) for v in t)  # noqa: E731
    eigval, eigvec = principal_components(cov)
    return PixelStatistics(as_tuple(channel_mean), as_tuple(std), eigval, eigvec, len(indices))
