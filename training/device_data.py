"""Training and evaluation batches from a data set held in memory, resized and augmented on the device.

Fashion-MNIST is 55 MB of uint8: it sits on the GPU whole, and each batch is indexed, resized from 28 to 224
(or 256) and augmented there as a few batched tensor ops. Decoding files and resizing on CPU workers, as an
image folder needs, would feed a GPU a few thousand images per second (the d2l book prints 4,153 for
AlexNet); this feeds it as fast as the network trains. On a CPU the same code runs on the CPU.

The steps are the image-folder pipeline's (training/presets.py), in its order, and the service's
(service/preprocess.py):

- resize: bilinear, in Pillow's two passes with its rounding to whole grey levels (`Pipeline.resize`), so the
  network trains on the pixels the service's decoder (and the book's torchvision ``Resize`` of a PIL image)
  makes of the same image: identical for 28 → 224 and 28 → 256;
- training: a random ``crop_size`` crop of the ``resize_size`` square and a random horizontal reflection per
  image, PCA colour lighting (the run's `ColourLighting`; on the RGB image, so a 1-channel image is replicated
  first), when the recipe asks for them (the paper's); the d2l recipe only resizes. Fashion-MNIST is grey, so
  ``alexnet-train`` gives it lighting only with ``--pca imagenet`` (training/train.py);
- evaluation: the centre crop, or the paper's ten crops in torchvision's TenCrop order, [N, 10, C, H, W];
- channels: a 3-channel network gets a grey image replicated to RGB (what the service's decoder makes of a
  grey upload); a 1-channel network gets the luma (training/presets.py's `Luma`) of an RGB batch, as the
  serving graph computes it;
- ``(x / 255 − mean) / std`` per channel.

Reproducibility: the order and every augmentation draw of an epoch come from a generator on the device
seeded with ``(seed, epoch)``; under DDP each process takes every `world_size`-th image of one shared
permutation (padded as ``DistributedSampler`` pads, so every process runs the same number of steps).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from alexnet_store.metadata import ColourLighting
from training.data import DataConfig, Loaders, derive_seed, stratified_subset
from training.presets import Luma, constant, lights

_LUMA = Luma()


@dataclass(frozen=True)
class Pipeline:
    """What happens to a batch of uint8 images [B, C, H, W] (C = 1 or 3) on its way into the network."""

    resize_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int  # the network's
    flip: bool = False
    lighting: ColourLighting | None = None  # PCA colour lighting; None: none

    def __post_init__(self) -> None:
        if not len(self.mean) == len(self.std) == self.in_channels:
            raise ValueError(f"mean/std need {self.in_channels} values each (got {self.mean}, {self.std})")
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop {self.crop_size} is larger than the resized {self.resize_size}")

    # -- the steps ---------------------------------------------------------------------------------------------
    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, h, w] → float [B, C, S, S] of whole grey levels in [0, 255].

        Enlarging, it is Pillow's bilinear resize of a uint8 image step for step: the rows first, rounded half up to
        whole levels, then the columns, rounded again. 28 → 224 and 28 → 256 give Pillow's pixels exactly
        (tests/test_device_data.py); 28 → 96 differs in 0.7 % of the pixels by at most 2 levels (Pillow's
        fixed-point weights). Shrinking (not needed for Fashion-MNIST) is one antialiased pass.
        """
        x = images.float()
        size = self.resize_size
        height, width = x.shape[-2:]
        if height > size or width > size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            return x.round_().clamp_(0, 255)
        if width != size:
            x = F.interpolate(x, size=(height, size), mode="bilinear", align_corners=False).add_(0.5).floor_()
        if height != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).add_(0.5).floor_()
        return x.clamp_(0, 255)

    def channels(self, x: torch.Tensor, rgb: bool) -> torch.Tensor:
        """[B, c, H, W] → 3 channels when `rgb` (grey replicated), else the network's count (RGB → luma)."""
        want = 3 if rgb else self.in_channels
        if x.shape[1] == want:
            return x
        return x.expand(-1, 3, -1, -1) if want == 3 else _LUMA(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels with the network's channels → (x − mean) / std."""
        mean = constant(tuple(self.mean), x.device, x.dtype).view(1, -1, 1, 1)
        std = constant(tuple(self.std), x.device, x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def train(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training batch: resize, random crop + reflection, PCA lighting, channels, normalisation."""
        x = self.resize(images)
        batch, device = x.shape[0], x.device
        if self.crop_size < self.resize_size:
            span = self.resize_size - self.crop_size + 1
            top = torch.randint(0, span, (batch,), generator=generator, device=device)
            left = torch.randint(0, span, (batch,), generator=generator, device=device)
            steps = torch.arange(self.crop_size, device=device)
            rows, cols = (top[:, None] + steps)[:, :, None], (left[:, None] + steps)[:, None, :]
            x = x[torch.arange(batch, device=device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            mirror = torch.rand(batch, generator=generator, device=device) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        x = x / 255.0
        if lights(self.lighting):
            x = self.channels(x, rgb=True)
            alpha = torch.randn(batch, 3, generator=generator, device=device) * self.lighting.alpha_std
            eigval, eigvec = constant(self.lighting.eigval, device), constant(self.lighting.eigvec, device)
            x = x + ((alpha * eigval) @ eigvec.T)[:, :, None, None]  # eigvec @ (α·λ) per image
        return self.normalise(self.channels(x, rgb=False)).contiguous()

    def evaluate(self, images: torch.Tensor, crops: str = "center") -> torch.Tensor:
        """The centre crop [B, C, c, c], or the ten crops [B, 10, C, c, c] (torchvision's TenCrop order)."""
        x = self.normalise(self.channels(self.resize(images) / 255.0, rgb=False))
        size, c = self.resize_size, self.crop_size
        mid, end = round((size - c) / 2.0), size - c  # torchvision's centre offset (round half to even)
        center = x[:, :, mid:mid + c, mid:mid + c]
        if crops == "center":
            return center.contiguous()
        if crops != "ten":
            raise ValueError(f"crops must be 'center' or 'ten', not {crops!r}")
        tl, tr, bl, br = x[:, :, :c, :c], x[:, :, :c, end:], x[:, :, end:, :c], x[:, :, end:, end:]
        # The second five are the first five of the mirrored image: its top-left is the mirrored top-right, ...
        mirrored = [p.flip(3) for p in (tr, tl, br, bl, center)]
        return torch.stack([tl, tr, bl, br, center, *mirrored], dim=1).contiguous()


class EpochOrder:
    """This process's share of one seeded permutation per epoch (`DistributedSampler`'s split and padding)."""

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.length / self.world_size)

    def generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(derive_seed(self.seed, self.epoch, 0xDA7A))

    def indices(self, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        order = torch.randperm(self.length, generator=generator, device=device)
        padded = len(self) * self.world_size
        if padded > self.length:
            order = torch.cat([order, order[:padded - self.length]])
        return order[self.rank::self.world_size]


class TrainBatches:
    """An epoch's training batches (x on the device, normalised; y), like a DataLoader with a sampler."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pipeline: Pipeline, batch_size: int,
                 order: EpochOrder) -> None:
        self.images, self.labels, self.pipeline = images, labels, pipeline
        self.batch_size, self.order = batch_size, order

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.images.device
        generator = self.order.generator(device)
        indices = self.order.indices(generator, device)
        for start in range(0, len(indices), self.batch_size):
            index = indices[start:start + self.batch_size]
            yield self.pipeline.train(self.images[index], generator), self.labels[index]


class EvalBatches:
    """Evaluation batches in order: every `world_size`-th image from `rank` (each image once in all)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pipeline: Pipeline, batch_size: int,
                 crops: str = "center", rank: int = 0, world_size: int = 1) -> None:
        self.images, self.labels = images[rank::world_size], labels[rank::world_size]
        self.pipeline, self.batch_size, self.crops = pipeline, batch_size, crops

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            images = self.images[start:start + self.batch_size]
            yield self.pipeline.evaluate(images, self.crops), self.labels[start:start + self.batch_size]


def to_device(images: Sequence | torch.Tensor, labels: Sequence | torch.Tensor,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, H, W] or [N, C, H, W] and labels → tensors on `device` ([N, C, H, W] uint8, int64)."""
    x = torch.as_tensor(images, dtype=torch.uint8)
    if x.dim() == 3:
        x = x[:, None]
    return x.to(device), torch.as_tensor(labels, dtype=torch.int64).to(device)


def mean_std(images: torch.Tensor, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixels in [0, 1], with the network's channels (a grey image replicated
    gives the same value for each of R, G, B). On the stored images: resizing barely moves either statistic."""
    total = torch.zeros(images.shape[1], dtype=torch.float64, device=images.device)
    total_sq = torch.zeros_like(total)
    for chunk in images.split(8192):
        x = chunk.to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
    if images.shape[1] != in_channels:
        if in_channels == 3:  # grey → RGB replicates the channel
            mean, std = mean.expand(3), std.expand(3)
        else:
            raise ValueError("mean/std of RGB images for a 1-channel network: compute them on the luma")
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def memory_loaders(train, val, cfg: DataConfig, device: torch.device) -> Loaders:
    """`training.data.build_loaders` for splits held in memory (`training.fashion_mnist.Split`: uint8 images and
    labels): the chosen images go to `device` once, and every batch is built there."""
    pipeline = Pipeline(resize_size=cfg.resize_size, crop_size=cfg.crop_size, mean=tuple(cfg.mean),
                        std=tuple(cfg.std), in_channels=cfg.in_channels, flip=cfg.flip, lighting=cfg.lighting)
    train_idx = stratified_subset(train.labels.tolist(), cfg.limit_train, cfg.seed)
    val_idx = stratified_subset(val.labels.tolist(), cfg.limit_val, cfg.seed)
    x, y = to_device(train.images[train_idx], train.labels[train_idx], device)
    vx, vy = to_device(val.images[val_idx], val.labels[val_idx], device)
    order = EpochOrder(len(y), cfg.seed, cfg.rank, cfg.world_size)
    batches = TrainBatches(x, y, pipeline, cfg.batch_size, order)
    evaluation = EvalBatches(vx, vy, pipeline, cfg.val_batch_size or cfg.batch_size, cfg.val_crops, cfg.rank,
                             cfg.world_size)
    return Loaders(batches, evaluation, order, len(y), len(vy))
