"""The d2l book's networks against the chapter's own printouts, the registry, and the init schemes.

Every expected table below is copied from the output cells of d2l-ai/d2l-pytorch-colab @ 0009bbc (d2l 0.16.4),
chapter_convolutional-modern/<network>.ipynb, where the book runs ``for layer in net: X = layer(X);
print(layer.__class__.__name__, 'output shape:\\t', X.shape)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.alexnet import AlexNet
from training.architectures import (
    ARCHITECTURES,
    ArchError,
    DenseBlock,
    build_model,
    count_parameters,
    describe,
    initialize,
    model_from_config,
    transition_block,
)

BOOK_TABLES = {
    ("d2l-alexnet", 224): """\
Conv2d output shape:	 torch.Size([1, 96, 54, 54])
ReLU output shape:	 torch.Size([1, 96, 54, 54])
MaxPool2d output shape:	 torch.Size([1, 96, 26, 26])
Conv2d output shape:	 torch.Size([1, 256, 26, 26])
ReLU output shape:	 torch.Size([1, 256, 26, 26])
MaxPool2d output shape:	 torch.Size([1, 256, 12, 12])
Conv2d output shape:	 torch.Size([1, 384, 12, 12])
ReLU output shape:	 torch.Size([1, 384, 12, 12])
Conv2d output shape:	 torch.Size([1, 384, 12, 12])
ReLU output shape:	 torch.Size([1, 384, 12, 12])
Conv2d output shape:	 torch.Size([1, 256, 12, 12])
ReLU output shape:	 torch.Size([1, 256, 12, 12])
MaxPool2d output shape:	 torch.Size([1, 256, 5, 5])
Flatten output shape:	 torch.Size([1, 6400])
Linear output shape:	 torch.Size([1, 4096])
ReLU output shape:	 torch.Size([1, 4096])
Dropout output shape:	 torch.Size([1, 4096])
Linear output shape:	 torch.Size([1, 4096])
ReLU output shape:	 torch.Size([1, 4096])
Dropout output shape:	 torch.Size([1, 4096])
Linear output shape:	 torch.Size([1, 10])
""",
    ("vgg11", 224): """\
Sequential output shape:	 torch.Size([1, 64, 112, 112])
Sequential output shape:	 torch.Size([1, 128, 56, 56])
Sequential output shape:	 torch.Size([1, 256, 28, 28])
Sequential output shape:	 torch.Size([1, 512, 14, 14])
Sequential output shape:	 torch.Size([1, 512, 7, 7])
Flatten output shape:	 torch.Size([1, 25088])
Linear output shape:	 torch.Size([1, 4096])
ReLU output shape:	 torch.Size([1, 4096])
Dropout output shape:	 torch.Size([1, 4096])
Linear output shape:	 torch.Size([1, 4096])
ReLU output shape:	 torch.Size([1, 4096])
Dropout output shape:	 torch.Size([1, 4096])
Linear output shape:	 torch.Size([1, 10])
""",
    ("nin", 224): """\
Sequential output shape:	 torch.Size([1, 96, 54, 54])
MaxPool2d output shape:	 torch.Size([1, 96, 26, 26])
Sequential output shape:	 torch.Size([1, 256, 26, 26])
MaxPool2d output shape:	 torch.Size([1, 256, 12, 12])
Sequential output shape:	 torch.Size([1, 384, 12, 12])
MaxPool2d output shape:	 torch.Size([1, 384, 5, 5])
Dropout output shape:	 torch.Size([1, 384, 5, 5])
Sequential output shape:	 torch.Size([1, 10, 5, 5])
AdaptiveAvgPool2d output shape:	 torch.Size([1, 10, 1, 1])
Flatten output shape:	 torch.Size([1, 10])
""",
    ("googlenet", 96): """\
Sequential output shape:	 torch.Size([1, 64, 24, 24])
Sequential output shape:	 torch.Size([1, 192, 12, 12])
Sequential output shape:	 torch.Size([1, 480, 6, 6])
Sequential output shape:	 torch.Size([1, 832, 3, 3])
Sequential output shape:	 torch.Size([1, 1024])
Linear output shape:	 torch.Size([1, 10])
""",
    ("resnet18", 224): """\
Sequential output shape:	 torch.Size([1, 64, 56, 56])
Sequential output shape:	 torch.Size([1, 64, 56, 56])
Sequential output shape:	 torch.Size([1, 128, 28, 28])
Sequential output shape:	 torch.Size([1, 256, 14, 14])
Sequential output shape:	 torch.Size([1, 512, 7, 7])
AdaptiveAvgPool2d output shape:	 torch.Size([1, 512, 1, 1])
Flatten output shape:	 torch.Size([1, 512])
Linear output shape:	 torch.Size([1, 10])
""",
}


def layer_table(net: nn.Sequential, size: int, channels: int = 1) -> str:
    """The book's loop, printed the book's way."""
    x = torch.rand(1, channels, size, size)
    lines = []
    with torch.no_grad():
        for layer in net:
            x = layer(x)
            lines.append(f"{layer.__class__.__name__} output shape:\t {x.shape}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("arch", "size"), list(BOOK_TABLES))
def test_layer_shapes_are_the_books(arch: str, size: int) -> None:
    net = build_model(arch, 10).eval()
    assert layer_table(net, size) == BOOK_TABLES[arch, size]


def test_d2l_alexnet_is_the_books_variant_of_the_paper() -> None:
    net = build_model("d2l-alexnet", 10)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0], c.groups) for c in convs] == [
        (1, 96, 11, 4, 1, 1), (96, 256, 5, 1, 2, 1), (256, 384, 3, 1, 1, 1), (384, 384, 3, 1, 1, 1),
        (384, 256, 3, 1, 1, 1)]
    assert not any("LocalResponseNorm" in type(m).__name__ for m in net.modules())  # no LRN, no groups
    # conv 1·96·121+96, 96·256·25+256, 256·384·9+384, 384·384·9+384, 384·256·9+256; fc 6400·4096+4096,
    # 4096·4096+4096, 4096·10+10 (counted by hand from the book's definition)
    assert count_parameters(net) == 46_764_746


def test_vgg_at_the_width_the_book_trains() -> None:
    """The book trains VGG-11 with every width divided by ``ratio = 4``: 16-32-64-128-128 channels."""
    net = build_model("vgg11", 10, width_divisor=4).eval()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64, 128, 128, 128, 128]
    assert layer_table(net, 224).splitlines()[5] == "Flatten output shape:\t torch.Size([1, 6272])"
    assert describe(net)["name"] == "vgg11 (widths ÷ 4)"


def test_densenet_blocks_print_what_the_book_prints() -> None:
    """The chapter's checks: DenseBlock(2, 3, 10) on [4, 3, 8, 8] gives 23 channels; transition_block(23, 10)
    halves the size. Its network ends in 64 + 4·32 → 96 → +128 → 112 → +128 → 120 → +128 = 248 channels."""
    y = DenseBlock(2, 3, 10)(torch.randn(4, 3, 8, 8))
    assert y.shape == (4, 23, 8, 8)
    assert transition_block(23, 10)(y).shape == (4, 10, 4, 4)
    net = build_model("densenet", 10).eval()
    assert isinstance(net[-3], nn.AdaptiveMaxPool2d)  # 0.16.4 pools the last maps by their maximum
    assert net[-1].in_features == 248
    with torch.no_grad():
        assert net(torch.rand(2, 1, 96, 96)).shape == (2, 10)


@pytest.mark.parametrize("arch", ["googlenet", "resnet18", "densenet"])
def test_the_96_pixel_networks_take_96_pixels(arch: str) -> None:
    assert ARCHITECTURES[arch].input_size == 96 and ARCHITECTURES[arch].in_channels == 1
    with torch.no_grad():
        assert build_model(arch, 7).eval()(torch.rand(3, 1, 96, 96)).shape == (3, 7)


def test_registry_errors_and_old_checkpoints() -> None:
    with pytest.raises(ArchError, match="unknown architecture 'lenet'"):
        build_model("lenet", 10)
    with pytest.raises(ArchError, match="takes no option"):
        build_model("resnet18", 10, grouped=False)
    with pytest.raises(ValueError, match="3 \\(RGB\\) input channels"):
        build_model("alexnet", 10, in_channels=1)
    # A checkpoint written before --arch existed: the paper's network.
    old = model_from_config({"num_classes": 5, "grouped": False, "dropout": 0.5})
    assert isinstance(old, AlexNet) and not old.grouped and old.num_classes == 5
    assert describe(old)["name"] == "alexnet-krizhevsky2012"


def test_xavier_is_the_books_init_and_leaves_biases_alone() -> None:
    """d2l's ``train_ch6``: ``nn.init.xavier_uniform_`` on every Conv2d and Linear weight, nothing else."""
    torch.manual_seed(0)
    net = build_model("d2l-alexnet", 10)
    before = {n: p.clone() for n, p in net.named_parameters() if n.endswith("bias")}
    initialize(net, "xavier")
    for layer in (m for m in net if isinstance(m, nn.Conv2d | nn.Linear)):
        fan_in = layer.weight[0].numel()
        fan_out = layer.weight.shape[0] * (layer.weight[0, 0].numel() if layer.weight.dim() == 4 else 1)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters() if n.endswith("bias"))


def test_paper_init_on_other_networks_zeroes_the_biases() -> None:
    net = build_model("resnet18", 10)
    initialize(net, "paper")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None or not c.bias.any() for c in convs)
    assert convs[0].weight.std().item() == pytest.approx(0.01, rel=0.1)
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert bool((bn.weight == 1).all()) and not bn.bias.any()
    with pytest.raises(ArchError, match="alexnet only"):
        initialize(net, "caffe")
