"""The paper's image pipelines: PCA lighting statistics, the training crops, and the ten test patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as tv1
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from training.presets import (
    PCA_EIGVAL,
    PCA_EIGVEC,
    PCALighting,
    center_transform,
    imagenet_lighting,
    ten_crop_transform,
    train_transform,
)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photograph: the first of the two that ship inside scikit-learn's wheel (427×640)."""
    from sklearn.datasets import load_sample_images

    return Image.fromarray(load_sample_images().images[0])


def _square(img: Image.Image, size: int = 256) -> torch.Tensor:
    """The paper's 256×256 image as float [3, 256, 256] in [0, 1]: shorter side to 256, central square."""
    out = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.ToImage(),
                      v2.ToDtype(torch.float32, scale=True)])(img)
    return out


def test_pca_lighting_offset_statistics() -> None:
    """Over many images the RGB offset has mean 0 and covariance V diag(λ²σ²) Vᵀ; α is independent per component."""
    torch.manual_seed(0)
    sigma = 0.1
    pca = PCALighting(sigma, eigval=PCA_EIGVAL, eigvec=PCA_EIGVEC)
    zero = torch.zeros(3, 4, 4)
    draws = 20_000
    offsets = torch.empty(draws, 3, dtype=torch.float64)
    for i in range(draws):
        out = pca(zero)
        assert torch.equal(out, out[:, :1, :1].expand_as(out))  # one offset for every pixel of an image
        offsets[i] = out[:, 0, 0].double()
    vec = torch.tensor(PCA_EIGVEC, dtype=torch.float64)  # column j: eigenvector of eigenvalue j
    lam = torch.tensor(PCA_EIGVAL, dtype=torch.float64)

    expected_cov = vec @ torch.diag(lam**2 * sigma**2) @ vec.T
    cov = torch.cov(offsets.T)
    scale = (lam[0] * sigma) ** 2
    assert torch.allclose(offsets.mean(0), torch.zeros(3, dtype=torch.float64), atol=4 * lam[0] * sigma / draws**0.5)
    assert torch.allclose(cov, expected_cov, atol=0.04 * scale.item())

    # In the eigenvector basis each component is α_j λ_j: variance (λ_j σ)², uncorrelated with the others.
    coeff = torch.linalg.solve(vec, offsets.T).T
    assert torch.allclose(coeff.var(0) / (lam * sigma) ** 2, torch.ones(3, dtype=torch.float64), rtol=0.05)
    corr = torch.corrcoef(coeff.T)
    assert torch.allclose(corr, torch.eye(3, dtype=torch.float64), atol=0.04)


def test_pca_lighting_can_be_turned_off() -> None:
    img = torch.rand(3, 8, 8)
    assert torch.equal(PCALighting(0.0, eigval=PCA_EIGVAL, eigvec=PCA_EIGVEC)(img), img)
    tf = train_transform((0.5,) * 3, (0.5,) * 3, lighting=imagenet_lighting(0.0))
    names = [type(t).__name__ for t in tf.transforms]
    assert "PCALighting" not in names  # and no lighting step at all when α's std is 0


def test_train_transform_is_a_random_224_crop_of_the_256_square(photo: Image.Image) -> None:
    """Without lighting and with identity normalisation, the output is exactly a crop (maybe mirrored) of the square."""
    square = _square(photo)
    tf = train_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), lighting=None)
    torch.manual_seed(3)
    seen_offsets, flips = set(), set()
    for _ in range(8):
        out = tf(photo)
        assert out.shape == (3, 224, 224) and out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        match = None
        for flipped, candidate in ((False, out), (True, TF.horizontal_flip(out))):
            # Offsets whose top-left pixel matches, then the whole patch.
            for top, left in (square[:, :33, :33] == candidate[:, :1, :1]).all(dim=0).nonzero().tolist():
                if torch.equal(square[:, top:top + 224, left:left + 224], candidate):
                    match = (top, left, flipped)
                    break
            if match:
                break
        assert match is not None, "output is not a 224×224 crop of the 256×256 square"
        seen_offsets.add(match[:2])
        flips.add(match[2])
    assert len(seen_offsets) > 1 and flips == {False, True}  # random positions and reflections


def test_train_transform_normalises_after_lighting(photo: Image.Image) -> None:
    """Mean/std normalisation is the last step and lighting works on [0, 1] pixels before it."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tf = train_transform(mean, std, lighting=imagenet_lighting(0.1))
    names = [type(t).__name__ for t in tf.transforms]
    assert names.index("PCALighting") < names.index("Normalize") == len(names) - 1
    torch.manual_seed(0)
    out = tf(photo)
    assert out.shape == (3, 224, 224)
    # Pixels in [0, 1] shifted by at most a few hundredths, then normalised.
    lo = (torch.tensor([0.0] * 3) - 0.1 - torch.tensor(mean)) / torch.tensor(std)
    hi = (torch.tensor([1.0] * 3) + 0.1 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.all(out.amin(dim=(1, 2)) >= lo) and torch.all(out.amax(dim=(1, 2)) <= hi)
    assert tf.transforms[-1].mean == list(mean) and tf.transforms[-1].std == list(std)


def test_train_transform_without_flip(photo: Image.Image) -> None:
    names = [type(t).__name__ for t in train_transform((0.5,) * 3, (0.5,) * 3, flip=False).transforms]
    assert "RandomHorizontalFlip" not in names


def test_ten_crop_layout_matches_torchvision(photo: Image.Image) -> None:
    """Four corners and the centre of the 256 square, then the same of its mirror image (torchvision's TenCrop)."""
    tf = ten_crop_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    crops = tf(photo)
    assert crops.shape == (10, 3, 224, 224)
    sq = _square(photo)
    mirror = TF.horizontal_flip(sq)

    def five(img: torch.Tensor) -> list[torch.Tensor]:
        return [img[:, :224, :224], img[:, :224, 32:], img[:, 32:, :224], img[:, 32:, 32:], img[:, 16:240, 16:240]]

    expected = torch.stack(five(sq) + five(mirror))
    assert torch.equal(crops, expected)
    # Exactly torchvision's (v1) TenCrop on the same 256×256 image.
    v1 = tv1.Compose([tv1.Resize(256), tv1.CenterCrop(256), tv1.TenCrop(224)])(photo)
    reference = torch.stack([tv1.functional.to_tensor(c) for c in v1])
    assert torch.allclose(crops, reference, atol=1 / 255 + 1e-6)
    # The centre patch of the ten is the single-crop evaluation.
    assert torch.equal(center_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(photo), crops[4])


def test_ten_crop_normalisation(photo: Image.Image) -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    raw = ten_crop_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(photo)
    norm = ten_crop_transform(mean, std)(photo)
    expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(norm, expected, atol=1e-5)


def test_grayscale_and_small_images(tmp_path: Path) -> None:
    """A small grayscale file (like the demo's digits) becomes three equal channels at full size."""
    path = tmp_path / "g.png"
    Image.new("L", (40, 30), 200).save(path)
    img = Image.open(path).convert("RGB")
    out = center_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(img)
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, torch.full_like(out, 200 / 255), atol=1e-6)


# -- the lighting's statistics: training/data.py ------------------------------------------------------------------
def _photo_folder(root: Path) -> Path:
    """A small ImageNet-layout train split of real photographs: regions of scikit-learn's two sample photos, in
    several sizes and aspect ratios, as PNG (lossless, so the expectation decodes the same pixels)."""
    from sklearn.datasets import load_sample_images

    for k, array in enumerate(load_sample_images().images):
        photo = Image.fromarray(array)
        (root / f"class_{k}").mkdir(parents=True)
        for i, (left, top, w, h) in enumerate([(0, 0, 300, 200), (200, 100, 160, 240), (350, 150, 96, 96),
                                               (40, 220, 257, 130)]):
            photo.crop((left, top, left + w, top + h)).save(root / f"class_{k}" / f"{i}.png")
    return root


def _expected_pixels(path: Path, size: int) -> np.ndarray:
    """The RGB pixels in [0, 1] of `path` as the network sees them, computed with Pillow and numpy alone: the shorter
    side resized to `size` (Pillow's antialiased bilinear; the longer side truncated, as torchvision sizes it), the
    central square cut out (torchvision's offsets: rounded half to even)."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize(new, Image.Resampling.BILINEAR)
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float64).reshape(-1, 3) / 255.0


def test_pixel_statistics_are_the_covariances_eigen_decomposition(tmp_path: Path) -> None:
    """Mean, std and the PCA lighting's eigenvalues/vectors in one pass, against numpy.linalg.eigh of the 3×3
    covariance of the same pixels computed independently (Pillow + numpy)."""
    from training.data import open_split, pixel_statistics

    root = _photo_folder(tmp_path / "data" / "train")
    dataset = open_split(root.parent, "train")
    stats = pixel_statistics(dataset, resize_size=64, max_images=None, progress=False)
    pixels = np.concatenate([_expected_pixels(Path(p), 64) for p, _ in dataset.samples])
    cov = np.cov(pixels.T, bias=True)
    values, vectors = np.linalg.eigh(cov)  # ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    assert stats.images == 8
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=0), atol=2e-6)
    np.testing.assert_allclose(stats.std, pixels.std(axis=0), atol=2e-6)
    np.testing.assert_allclose(stats.eigval, values, rtol=1e-5, atol=1e-8)
    got = np.array(stats.eigvec)
    for j in range(3):  # each eigenvector up to its sign (the record makes its largest component positive)
        assert abs(float(got[:, j] @ vectors[:, j])) == pytest.approx(1.0, abs=1e-6)
        assert got[np.argmax(np.abs(got[:, j])), j] > 0
    assert values[0] > values[1] > values[2] > 0  # real colour photographs: three distinct components
    lighting = stats.lighting(0.1)
    assert lighting.eigen == "computed" and lighting.alpha_std == 0.1 and lighting.images == 8
    # A 1-channel network normalises with the luma's mean and std: those of Y = 0.299 R + 0.587 G + 0.114 B.
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    grey = pixel_statistics(dataset, resize_size=64, max_images=None, progress=False, in_channels=1)
    np.testing.assert_allclose(grey.mean + grey.std, (luma.mean(), luma.std()), atol=2e-6)
    assert grey.eigval == stats.eigval  # the lighting works on RGB, whatever the network's channels
