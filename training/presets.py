"""The paper's image pipelines for training and evaluation, built from torchvision transforms.

Only PCA colour augmentation and the luma of 1-channel networks are written here: torchvision has no transform
for the first, and its Grayscale weights differ from the service's in the fourth digit (0.2989 vs 0.299).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from alexnet_store.metadata import LUMA_WEIGHTS

# ImageNet RGB statistics of pixel values in [0, 1], as used by fb.resnet.torch for the paper's
# "fancy PCA" (section 4.1). Column j of EIGVEC is the eigenvector of EIGVAL[j].
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
PCA_ALPHA_STD = 0.1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_mean_std(in_channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's statistics for the network's channels; for 1 channel, the luma of the mean and of the std (the
    std of a weighted sum of correlated channels is close to the weighted sum of their stds: 0.226)."""
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    luma = lambda v: (round(sum(w * x for w, x in zip(LUMA_WEIGHTS, v, strict=True)), 6),)  # noqa: E731
    return luma(IMAGENET_MEAN), luma(IMAGENET_STD)


class PCALighting(torch.nn.Module):
    """Add Σ_j eigvec[:, j] · α_j · λ_j to every pixel, α ~ N(0, σ) drawn once per image (paper §4.1)."""

    def __init__(self, alpha_std: float = PCA_ALPHA_STD, eigval: Sequence[float] = PCA_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = PCA_EIGVEC) -> None:
        super().__init__()
        self.alpha_std = alpha_std
        self.register_buffer("eigval", torch.tensor(eigval, dtype=torch.float32), persistent=False)
        self.register_buffer("eigvec", torch.tensor(eigvec, dtype=torch.float32), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.alpha_std == 0:
            return img
        alpha = torch.randn(3) * self.alpha_std
        rgb = self.eigvec @ (alpha * self.eigval)
        return img + rgb.view(3, 1, 1).to(img.dtype)

    def extra_repr(self) -> str:
        return f"alpha_std={self.alpha_std}"


@functools.lru_cache(maxsize=64)
def constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`values` as a tensor on `device`, made once: building it per batch would copy from the host each time, and a
    copy from pageable memory to a GPU waits for the GPU to finish what it was given (no more overlap)."""
    return torch.tensor(values, dtype=dtype, device=device)


class Luma(torch.nn.Module):
    """RGB → 1 channel: Y = Σ LUMA_WEIGHTS · (R, G, B) on dim −3, as the serving graph computes it for a 1-channel
    network (service/graph.py). Works on one image [3, H, W] and on batches [..., 3, H, W]."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        weights = constant(LUMA_WEIGHTS, img.device, img.dtype).view(3, 1, 1)
        return (img * weights).sum(dim=-3, keepdim=True)


def _channels(in_channels: int) -> list[torch.nn.Module]:
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, not {in_channels}")
    return [Luma()] if in_channels == 1 else []


def _to_float() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


def _square(resize_size: int) -> list[v2.Transform]:
    """Shorter side to `resize_size`, then the central square (the paper's 256×256 image)."""
    return [v2.Resize(resize_size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(resize_size)]


def train_transform(mean: Sequence[float], std: Sequence[float], resize_size: int = 256, crop_size: int = 224,
                    pca_std: float = PCA_ALPHA_STD, flip: bool = True, in_channels: int = 3) -> v2.Compose:
    """Random crop + horizontal reflection of the 256×256 image, PCA lighting, (luma,) mean/std normalisation."""
    steps = [*_square(resize_size), v2.RandomCrop(crop_size)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [*_to_float(), PCALighting(pca_std), *_channels(in_channels), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def center_transform(mean: Sequence[float], std: Sequence[float], resize_size: int = 256,
                     crop_size: int = 224, in_channels: int = 3) -> v2.Compose:
    """The single centre patch: one tensor [in_channels, crop, crop]."""
    return v2.Compose([*_square(resize_size), v2.CenterCrop(crop_size), *_to_float(), *_channels(in_channels),
                       v2.Normalize(mean, std)])


def _stack_crops(crops: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.stack(crops)


def ten_crop_transform(mean: Sequence[float], std: Sequence[float], resize_size: int = 256,
                       crop_size: int = 224, in_channels: int = 3) -> v2.Compose:
    """The paper's test-time patches: four corners and centre, plus their reflections: [10, C, crop, crop]."""
    return v2.Compose([
        *_square(resize_size),
        *_to_float(),
        v2.TenCrop(crop_size),
        _stack_crops,
        *_channels(in_channels),
        v2.Normalize(mean, std),
    ])
