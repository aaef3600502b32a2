"""Batches built on the device from Fashion-MNIST in memory: the pixels the service would make of the same image,
the paper's crops/reflections/lighting per image, the book's plain resize, and the split across processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from service.preprocess import crop_patches
from training.device_data import EpochOrder, EvalBatches, Pipeline, TrainBatches, mean_std, to_device
from training.presets import PCA_EIGVAL, PCA_EIGVEC, imagenet_lighting

LUMA = (0.299, 0.587, 0.114)  # Pillow's convert("L") (ITU-R 601-2), written out independently of the code


@pytest.fixture(scope="module")
def images(fashion_mnist) -> np.ndarray:
    return fashion_mnist.test.images[:64]


def pillow_square(image: np.ndarray, size: int) -> np.ndarray:
    """What the service's decoder makes of a stored 28×28 grey image: Pillow's bilinear resize (uint8)."""
    return np.asarray(Image.fromarray(image, "L").resize((size, size), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("size", [224, 256])
def test_resize_gives_pillows_pixels(images: np.ndarray, size: int) -> None:
    ours = Pipeline(size, size, (0.0,), (1.0,), 1).resize(torch.from_numpy(images[:, None].copy()))
    expected = np.stack([pillow_square(im, size) for im in images])
    assert np.array_equal(ours[:, 0].numpy().astype(np.uint8), expected)


def test_resize_to_96_stays_within_two_levels(images: np.ndarray) -> None:
    ours = Pipeline(96, 96, (0.0,), (1.0,), 1).resize(torch.from_numpy(images[:, None].copy()))[:, 0].numpy()
    diff = np.abs(ours - np.stack([pillow_square(im, 96) for im in images]).astype(np.float32))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.02


def test_ten_crops_are_the_services(images: np.ndarray) -> None:
    """Corners, centre and their reflections in the service's (and torchvision's TenCrop) order."""
    pipe = Pipeline(256, 224, (0.0,), (1.0,), 1)
    ten = pipe.evaluate(torch.from_numpy(images[:8, None].copy()), "ten")
    assert ten.shape == (8, 10, 1, 224, 224)
    for i in range(8):
        square = np.repeat(pillow_square(images[i], 256)[:, :, None], 3, axis=2)
        expected = crop_patches(square, 224, "ten")[..., 0].astype(np.float32) / 255.0
        np.testing.assert_allclose(ten[i, :, 0].numpy(), expected, atol=1e-6)
    center = pipe.evaluate(torch.from_numpy(images[:8, None].copy()), "center")
    assert torch.equal(center, ten[:, 4])


def test_normalisation_and_channels(images: np.ndarray) -> None:
    x = torch.from_numpy(images[:4, None].copy())
    grey = Pipeline(224, 224, (0.5,), (0.25,), 1).evaluate(x)
    plain = Pipeline(224, 224, (0.0,), (1.0,), 1).evaluate(x)
    torch.testing.assert_close(grey, (plain - 0.5) / 0.25)
    rgb = Pipeline(224, 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 3).evaluate(x)  # a grey image for an RGB network
    assert rgb.shape == (4, 3, 224, 224) and torch.equal(rgb[:, 0], rgb[:, 2]) and torch.equal(rgb[:, 1], plain[:, 0])
    colour = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)  # an RGB image for a 1-channel network
    luma = Pipeline(28, 28, (0.0,), (1.0,), 1).evaluate(colour)
    expected = sum(w * colour[:, c].float() for c, w in enumerate(LUMA)) / 255.0
    torch.testing.assert_close(luma[:, 0], expected)


def test_the_books_recipe_only_resizes(images: np.ndarray) -> None:
    pipe = Pipeline(224, 224, (0.0,), (1.0,), 1)
    x = torch.from_numpy(images[:6, None].copy())
    out = pipe.train(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, pipe.evaluate(x))


def test_the_papers_crops_and_reflections(images: np.ndarray) -> None:
    """Each image: one 224 crop of its own 256 square, mirrored or not, drawn per image and per seed."""
    pipe = Pipeline(256, 224, (0.0,), (1.0,), 1, flip=True)
    x = torch.from_numpy(images[:12, None].copy())
    out = pipe.train(x, torch.Generator().manual_seed(3))
    assert out.shape == (12, 1, 224, 224)
    assert torch.equal(out, pipe.train(x, torch.Generator().manual_seed(3)))  # a function of the seed
    assert not torch.equal(out, pipe.train(x, torch.Generator().manual_seed(4)))
    found = []
    for i in range(12):
        square = pillow_square(images[i], 256).astype(np.float32) / np.float32(255.0)
        patch = out[i, 0].numpy()
        matches = [(top, left, mirrored) for mirrored in (False, True) for top in range(33) for left in range(33)
                   if np.array_equal((square[:, ::-1] if mirrored else square)[top, left:left + 224], patch[0])
                   and np.array_equal((square[:, ::-1] if mirrored else square)[top:top + 224, left:left + 224], patch)]
        assert matches, f"image {i} is not a crop of its square"
        found.append(matches[0])
    assert len({f[:2] for f in found}) > 6 and 1 <= sum(f[2] for f in found) <= 11


def test_pca_lighting_statistics(fashion_mnist) -> None:
    """The paper's lighting: per image, Σ_j eigvec[:, j] α_j λ_j added to every pixel, α_j ~ N(0, 0.1): each
    channel's shift has variance Σ_j (eigvec[c, j] λ_j 0.1)²."""
    x = torch.from_numpy(fashion_mnist.train.images[:4000, None].copy())
    lit = Pipeline(28, 28, (0.0,) * 3, (1.0,) * 3, 3, lighting=imagenet_lighting(0.1)).train(
        x, torch.Generator().manual_seed(0))
    plain = Pipeline(28, 28, (0.0,) * 3, (1.0,) * 3, 3).evaluate(x)
    shift = (lit - plain).flatten(2)
    assert float((shift - shift[:, :, :1]).abs().max()) < 1e-5  # one offset per image and channel
    expected = [0.1 * sum((PCA_EIGVEC[c][j] * PCA_EIGVAL[j]) ** 2 for j in range(3)) ** 0.5 for c in range(3)]
    assert shift[:, :, 0].std(dim=0).tolist() == pytest.approx(expected, rel=0.06)
    grey = Pipeline(28, 28, (0.0,), (1.0,), 1, lighting=imagenet_lighting(0.1)).train(
        x[:50], torch.Generator().manual_seed(0))
    assert grey.shape == (50, 1, 28, 28)  # lit in colour, then the luma for a 1-channel network


def test_epochs_and_processes(images: np.ndarray) -> None:
    labels = torch.arange(10).repeat(7)[:64]
    x, y = to_device(images, labels, torch.device("cpu"))
    pipe = Pipeline(28, 28, (0.0,), (1.0,), 1)
    seen = []
    for rank in range(3):  # three processes: one permutation, every image once (padded to equal shares)
        order = EpochOrder(64, seed=5, rank=rank, world_size=3)
        order.set_epoch(2)
        batches = TrainBatches(x, y, pipe, 8, order)
        assert len(order) == 22 and len(batches) == 3
        seen += [int(v) for _, yb in batches for v in yb]
    assert len(seen) == 66 and sorted(set(seen)) == list(range(10))
    order = EpochOrder(64, seed=5)
    first = [int(v) for _, yb in TrainBatches(x, y, pipe, 64, order) for v in yb]
    order.set_epoch(1)
    second = [int(v) for _, yb in TrainBatches(x, y, pipe, 64, order) for v in yb]
    assert sorted(first) == sorted(second) == sorted(labels.tolist()) and first != second
    shards = [EvalBatches(x, y, pipe, 16, rank=r, world_size=2) for r in range(2)]
    assert sum(len(list(yb)) for s in shards for _, yb in s) == 64


def test_mean_std_of_grey_images(images: np.ndarray) -> None:
    x = torch.from_numpy(images[:, None].copy())
    mean, std = mean_std(x, 1)
    pixels = images / 255.0
    assert mean[0] == pytest.approx(pixels.mean(), abs=1e-6) and std[0] == pytest.approx(pixels.std(), abs=1e-6)
    mean3, std3 = mean_std(x, 3)
    assert mean3 == mean * 3 and std3 == std * 3
