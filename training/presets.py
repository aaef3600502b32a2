"""The paper's image pipelines for training and evaluation, built from torchvision transforms.

Only PCA colour augmentation and the luma of 1-channel networks are written here: torchvision has no transform
for the first, and its Grayscale weights differ from the service's in the fourth digit (0.2989 vs 0.299). The
lighting's eigenvectors and eigenvalues come from the training set (training/data.py `pixel_statistics`, the
paper's way) unless ImageNet's are asked for (`imagenet_lighting`, ``alexnet-train --pca imagenet``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from alexnet_store.metadata import LUMA_WEIGHTS, ColourLighting
from alexnet_store.vocabulary import IMAGENET_MEAN, IMAGENET_STD

# ImageNet RGB statistics of pixel values in [0, 1], as used by fb.resnet.torch for the paper's
# "fancy PCA" (section 4.1). Column j of EIGVEC is the eigenvector of EIGVAL[j]. Only on request (`--pca imagenet`)
# and for checkpoints older than the lighting record (they were trained with them).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
PCA_ALPHA_STD = 0.1
# How training resizes images: the exported metadata's `preprocessing.interpolation`, so the service resizes the same
# way. (The Fashion-MNIST pipeline on the device resizes bilinearly in Pillow's arithmetic: training/device_data.py.)
INTERPOLATION = "bilinear"
_MODES = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def imagenet_mean_std(in_channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's statistics for the network's channels; for 1 channel, the luma of the mean and of the std (the
    std of a weighted sum of correlated channels is close to the weighted sum of their stds: 0.226)."""
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    luma = lambda v: (round(sum(w * x for w, x in zip(LUMA_WEIGHTS, v, strict=True)), 6),)  # noqa: E731
    return luma(IMAGENET_MEAN), luma(IMAGENET_STD)


def crop_scheme(flip: bool) -> str:
    """The test-time crops a model supports (its metadata's `preprocessing.crops`, the service's default): the
    paper's ten when it was trained with reflections, else the centre one — ten-crop averages half mirror images a
    model trained without reflections never saw (the no-reflection digits demo: 90.3 % instead of 97.2 %)."""
    return "ten" if flip else "center"


def imagenet_lighting(alpha_std: float = PCA_ALPHA_STD) -> ColourLighting:
    """PCA lighting with ImageNet's constants (`--pca imagenet`)."""
    return ColourLighting(eigen="imagenet", alpha_std=alpha_std, eigval=PCA_EIGVAL, eigvec=PCA_EIGVEC)


NO_LIGHTING = ColourLighting(eigen="none", alpha_std=0.0)


def lights(lighting: ColourLighting | None) -> bool:
    """Whether `lighting` changes any pixel."""
    return lighting is not None and lighting.eigen != "none" and lighting.alpha_std > 0


class PCALighting(torch.nn.Module):
    """Add Σ_j eigvec[:, j] · α_j · λ_j to every pixel, α ~ N(0, σ) drawn once per image (paper §4.1)."""

    def __init__(self, alpha_std: float = PCA_ALPHA_STD, *, eigval: Sequence[float],
                 eigvec: Sequence[Sequence[float]]) -> None:
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


def _square(resize_size: int, interpolation: str = INTERPOLATION) -> list[v2.Transform]:
    """Shorter side to `resize_size` (antialiased, as Pillow and the service resize), then the central square (the
    paper's 256×256 image)."""
    return [v2.Resize(resize_size, interpolation=_MODES[interpolation], antialias=True), v2.CenterCrop(resize_size)]


def train_transform(mean: Sequence[float], std: Sequence[float], resize_size: int = 256, crop_size: int = 224,
                    lighting: ColourLighting | None = None, flip: bool = True, in_channels: int = 3) -> v2.Compose:
    """Random crop + horizontal reflection of the 256×256 image, PCA lighting (when `lighting` has any), (luma,)
    mean/std normalisation."""
    steps = [*_square(resize_size), v2.RandomCrop(crop_size)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += _to_float()
    if lights(lighting):
        steps.append(PCALighting(lighting.alpha_std, eigval=lighting.eigval, eigvec=lighting.eigvec))
    steps += [*_channels(in_channels), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def center_transform(mean: Sequence[float], std: Sequence[float], resize_size: int = 256,
                     crop_size: int = 224, in_channels: int = 3, interpolation: str = INTERPOLATION) -> v2.Compose:
    """The single centre patch: one tensor [in_channels, crop, crop]."""
    return v2.Compose([*_square(resize_size, interpolation), v2.CenterCrop(crop_size), *_to_float(),
                       *_channels(in_channels), v2.Normalize(mean, std)])


def _stack_crops(crops: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.stack(crops)


def ten_crop_transform(mean: Sequence[float], std: Sequence[float], resize_size: int = 256,
                       crop_size: int = 224, in_channels: int = 3, interpolation: str = INTERPOLATION) -> v2.Compose:
    """The paper's test-time patches: four corners and centre, plus their reflections: [10, C, crop, crop]."""
    return v2.Compose([
        *_square(resize_size, interpolation),
        *_to_float(),
        v2.TenCrop(crop_size),
        _stack_crops,
        *_channels(in_channels),
        v2.Normalize(mean, std),
    ])
