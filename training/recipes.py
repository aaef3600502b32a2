"""Training recipes (`alexnet-train --recipe`): the 2012 paper's, and the d2l book's for each of its networks.

A recipe only supplies defaults: `alexnet-train --recipe d2l --arch vgg11 --help` shows them, and any flag
given on the command line wins.

- ``paper`` (Krizhevsky et al. 2012, section 5), on any network: SGD with momentum 0.9 and weight decay 5e-4,
  batch 128, learning rate 0.01 divided by 10 when the validation error stops improving, weights N(0, 0.01)
  (AlexNet's biases 1 in conv2/4/5 and fc6/7), random 224 crops of the 256×256 image, horizontal reflections,
  PCA colour lighting, per-channel mean/std (ImageNet's), ~90 epochs.
- ``d2l``: the book's ``d2l.train_ch6`` (Dive into Deep Learning, chapter "Convolutional Neural Networks",
  lenet.ipynb) as each network's section calls it: plain SGD (no momentum, no weight decay, a constant learning
  rate), Xavier-uniform weights (biases left at PyTorch's default), 10 epochs, and the images only resized
  (``transforms.Resize`` + ``ToTensor``: no crops, reflections, colour or mean/std). Learning rate, batch
  size and input size per network, from d2l-ai/d2l-pytorch-colab @ 0009bbc (d2l 0.16.4),
  chapter_convolutional-modern/<network>.ipynb; ``BOOK_RESULTS`` are the lines that same run printed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from training.architectures import arch_spec

RECIPES = ("paper", "d2l")
BOOK_SOURCE = "d2l-ai/d2l-pytorch-colab@0009bbc (d2l 0.16.4), chapter_convolutional-modern/{notebook}.ipynb"


@dataclass(frozen=True)
class Recipe:
    """Every `alexnet-train` default a recipe sets (the names are the command's options)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_schedule: str  # "plateau": ÷ lr_factor when validation top-1 error stops improving; "constant"
    init: str
    resize_size: int  # the square the image is resized to
    input_size: int  # the network's input: the crop taken from that square (equal: the whole image)
    pca_std: float
    no_flip: bool
    mean_std: str  # "imagenet", "compute" or "none" (mean 0, std 1: pixels in [0, 1] as they are)
    width_divisor: int = 1  # vgg11 only

    def defaults(self) -> dict[str, Any]:
        return asdict(self)


PAPER = Recipe(epochs=90, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4, lr_schedule="plateau",
               init="paper", resize_size=256, input_size=224, pca_std=0.1, no_flip=False, mean_std="imagenet")
_D2L = Recipe(epochs=10, batch_size=128, lr=0.01, momentum=0.0, weight_decay=0.0, lr_schedule="constant",
              init="xavier", resize_size=224, input_size=224, pca_std=0.0, no_flip=True, mean_std="none")
# Per network: (notebook, lr, batch size, input size, other settings), as each section's code sets them.
# The paper's network under the d2l recipe takes the book's AlexNet settings.
D2L_SETTINGS: dict[str, tuple[str, float, int, int, dict[str, Any]]] = {
    "alexnet": ("alexnet", 0.01, 128, 224, {}),
    "d2l-alexnet": ("alexnet", 0.01, 128, 224, {}),
    "vgg11": ("vgg", 0.05, 128, 224, {"width_divisor": 4}),  # `ratio = 4; small_conv_arch = ...`
    "nin": ("nin", 0.1, 128, 224, {}),
    "googlenet": ("googlenet", 0.1, 128, 96, {}),
    "resnet18": ("resnet", 0.05, 256, 96, {}),
    "densenet": ("densenet", 0.1, 256, 96, {}),
}


@dataclass(frozen=True)
class BookResult:
    """What ``train_ch6`` printed after 10 epochs: ``loss …, train acc …, test acc …`` and ``… examples/sec``."""

    loss: float
    train_acc: float
    test_acc: float
    examples_per_sec: float


# The printed lines of d2l-ai/d2l-pytorch-colab @ 0009bbc (d2l 0.16.4, one GPU, "cuda:0"), by notebook.
BOOK_RESULTS: dict[str, BookResult] = {
    "alexnet": BookResult(0.332, 0.878, 0.880, 4153.2),
    "vgg": BookResult(0.181, 0.933, 0.916, 2547.7),
    "nin": BookResult(0.582, 0.804, 0.792, 3201.2),
    "googlenet": BookResult(0.248, 0.905, 0.890, 3466.8),
    "resnet": BookResult(0.019, 0.994, 0.915, 4718.4),
    "densenet": BookResult(0.149, 0.945, 0.785, 5518.2),
}


def book_result(arch: str) -> tuple[BookResult, str]:
    """The book's printed result for the section that trains `arch` (the paper's alexnet: the AlexNet section,
    whose network is d2l-alexnet), and the notebook it comes from."""
    notebook = D2L_SETTINGS[arch][0]
    return BOOK_RESULTS[notebook], BOOK_SOURCE.format(notebook=notebook)


def recipe_for(name: str, arch: str) -> Recipe:
    """The defaults of recipe `name` for network `arch`."""
    arch_spec(arch)  # an unknown network is an error here too
    if name == "paper":
        return PAPER
    if name != "d2l":
        raise ValueError(f"unknown recipe {name!r} ({', '.join(RECIPES)})")
    _notebook, lr, batch, size, extra = D2L_SETTINGS[arch]
    return replace(_D2L, lr=lr, batch_size=batch, resize_size=size, input_size=size, **extra)


def describe(name: str) -> str:
    """One line per network for --help: the d2l recipe's learning rate, batch and input size."""
    if name == "paper":
        return "the paper's: SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.01 ÷10 on plateau, 224 crops of 256"
    return "the d2l book's plain SGD for 10 epochs, per network: " + "; ".join(
        f"{arch} lr {lr:g} batch {batch} input {size}" for arch, (_nb, lr, batch, size, _x) in D2L_SETTINGS.items())
