"""The paper's image pipelines for training and evaluation, built from torchvision transforms.

Only PCA colour augmentation is written here: torchvision has no transform for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

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


def _to_float() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


def _square(resize_size: int) -> list[v2.Transform]:
    """Shorter side to `resize_size`, then the central square (the paper's 256×256 image)."""
    return [v2.Resize(resize_size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(resize_size)]


def train_transform(mean: Sequence[float], std: Sequence[float], resize_size: int = 256, crop_size: int = 224,
                    pca_std: float = PCA_ALPHA_STD, flip: bool = True) -> v2.Compose:
    """Random crop + horizontal reflection of the 256×256 image, PCA lighting, mean/std normalisation."""
    steps = [*_square(resize_size), v2.RandomCrop(crop_size)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [*_to_float(), PCALighting(pca_std), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def center_transform(mean: Sequence[float], std: Sequence[float], resize_size: int = 256,
                     crop_size: int = 224) -> v2.Compose:
    """The single centre patch: one tensor [3, crop, crop]."""
    return v2.Compose([*_square(resize_size), v2.CenterCrop(crop_size), *_to_float(), v2.Normalize(mean, std)])


def _stack_crops(crops: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.stack(crops)


def ten_crop_transform(mean: Sequence[float], std: Sequence[float], resize_size: int = 256,
                       crop_size: int = 224) -> v2.Compose:
    """The paper's test-time patches: four corners and centre, plus their reflections: [10, 3, crop, crop]."""
    return v2.Compose([
        *_square(resize_size),
        *_to_float(),
        v2.TenCrop(crop_size),
        _stack_crops,
        v2.Normalize(mean, std),
    ])
