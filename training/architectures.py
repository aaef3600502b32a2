"""Every network a command can build (`--arch`): the paper's AlexNet and the d2l book's modern networks.

The book is *Dive into Deep Learning*, chapter "Modern Convolutional Neural Networks". The definitions follow
the notebooks of d2l-ai/d2l-pytorch-colab at commit 0009bbc (d2l 0.16.4), chapter_convolutional-modern/
{alexnet,vgg,nin,googlenet,resnet,densenet}.ipynb: the version whose printed results (AlexNet: ``loss 0.332,
train acc 0.878, test acc 0.880, 4153.2 examples/sec``) docs/experiment.md puts beside ours. Each takes the
book's 1-channel Fashion-MNIST images (the service gives them the luma of an RGB upload, service/graph.py)
and is a ``nn.Sequential`` of the book's top-level layers, so ``for layer in net: X = layer(X)`` prints the
book's shape tables (tests/test_networks.py compares them line by line).

- ``alexnet``: the paper's network, unchanged (training/alexnet.py): 3 input channels, LRN, conv2/4/5 grouped.
- ``d2l-alexnet``: the book's variant: 1 input channel, conv1 padded by 1 (54×54 maps), no LRN, no groups,
  96-256-384-384-256 convolutions, 6400-4096-4096-10 classifier (46,764,746 parameters).
- ``vgg11``: VGG-11, conv_arch ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)); the book *trains* it with every
  width divided by ``ratio = 4`` (`width_divisor`, set by the d2l recipe: training/recipes.py).
- ``nin``: Network in Network, four NiN blocks, global average pooling, no fully connected layer.
- ``googlenet``: GoogLeNet's five stages of Inception blocks (the book feeds it 96×96 images).
- ``resnet18``: ResNet-18 with the book's `Residual` block (BN after each conv, 1×1 conv on the shortcut when
  the shape changes).
- ``densenet``: DenseNet with four dense blocks of four convs (growth rate 32) and transition layers; the head
  is BN → ReLU → global *max* pooling → linear in 0.16.4 (later editions pool by average).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.alexnet import ALEXNET_INIT_SCHEMES, AlexNet, count_parameters


# -- the book's networks ----------------------------------------------------------------------------------------
def d2l_alexnet(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2), nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(), nn.Dropout(p=dropout),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=dropout),
        nn.Linear(4096, num_classes))


VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg11(num_classes: int = 10, in_channels: int = 1, width_divisor: int = 1, dropout: float = 0.5) -> nn.Sequential:
    """VGG-11 for 224×224 inputs (five blocks halve 224 to 7); `width_divisor` is the book's ``ratio``."""
    blocks = []
    for num_convs, channels in VGG11_ARCH:
        out_channels = channels // width_divisor
        blocks.append(vgg_block(num_convs, in_channels, out_channels))
        in_channels = out_channels
    return nn.Sequential(
        *blocks, nn.Flatten(),
        nn.Linear(in_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(4096, num_classes))


def nin_block(in_channels: int, out_channels: int, kernel_size: int, strides: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU())


def nin(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5) -> nn.Sequential:
    return nn.Sequential(
        nin_block(in_channels, 96, kernel_size=11, strides=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1),
        nn.MaxPool2d(3, stride=2), nn.Dropout(dropout),
        nin_block(384, num_classes, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten())


class Inception(nn.Module):
    """Four parallel paths (1×1; 1×1 → 3×3; 1×1 → 5×5; 3×3 max-pool → 1×1) concatenated on the channels."""

    def __init__(self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int) -> None:
        super().__init__()
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


def googlenet(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
                       nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b3 = nn.Sequential(Inception(192, 64, (96, 128), (16, 32), 32),
                       Inception(256, 128, (128, 192), (32, 96), 64),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b4 = nn.Sequential(Inception(480, 192, (96, 208), (16, 48), 64),
                       Inception(512, 160, (112, 224), (24, 64), 64),
                       Inception(512, 128, (128, 256), (24, 64), 64),
                       Inception(512, 112, (144, 288), (32, 64), 64),
                       Inception(528, 256, (160, 320), (32, 128), 128),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b5 = nn.Sequential(Inception(832, 256, (160, 320), (32, 128), 128),
                       Inception(832, 384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, num_classes))


class Residual(nn.Module):
    """The book's residual block: conv-BN-ReLU-conv-BN plus the input (through a 1×1 conv when asked), ReLU."""

    def __init__(self, input_channels: int, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.conv3 is not None:
            x = self.conv3(x)
        return F.relu(y + x)


def resnet_block(input_channels: int, num_channels: int, num_residuals: int, first_block: bool = False) -> list:
    return [Residual(input_channels, num_channels, use_1x1conv=True, strides=2) if i == 0 and not first_block
            else Residual(num_channels, num_channels) for i in range(num_residuals)]


def resnet18(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    return nn.Sequential(
        b1,
        nn.Sequential(*resnet_block(64, 64, 2, first_block=True)),
        nn.Sequential(*resnet_block(64, 128, 2)),
        nn.Sequential(*resnet_block(128, 256, 2)),
        nn.Sequential(*resnet_block(256, 512, 2)),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, num_classes))


def conv_block(input_channels: int, num_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(input_channels), nn.ReLU(),
                         nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    """`num_convs` conv blocks, each fed the concatenation of the block's input and every earlier output."""

    def __init__(self, num_convs: int, input_channels: int, num_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(*(conv_block(num_channels * i + input_channels, num_channels)
                                   for i in range(num_convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            x = torch.cat((x, blk(x)), dim=1)
        return x


def transition_block(input_channels: int, num_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(input_channels), nn.ReLU(),
                         nn.Conv2d(input_channels, num_channels, kernel_size=1), nn.AvgPool2d(kernel_size=2, stride=2))


def densenet(num_classes: int = 10, in_channels: int = 1, growth_rate: int = 32,
             num_convs_in_dense_blocks: tuple[int, ...] = (4, 4, 4, 4)) -> nn.Sequential:
    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    num_channels = 64
    blocks: list[nn.Module] = []
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blocks.append(DenseBlock(num_convs, num_channels, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(num_convs_in_dense_blocks) - 1:  # a transition layer halves the channels between blocks
            blocks.append(transition_block(num_channels, num_channels // 2))
            num_channels //= 2
    return nn.Sequential(b1, *blocks, nn.BatchNorm2d(num_channels), nn.ReLU(), nn.AdaptiveMaxPool2d((1, 1)),
                         nn.Flatten(), nn.Linear(num_channels, num_classes))


def paper_alexnet(num_classes: int = 1000, in_channels: int = 3, grouped: bool = True,
                  dropout: float = 0.5) -> AlexNet:
    if in_channels != 3:
        raise ValueError("the paper's alexnet takes 3 (RGB) input channels")
    return AlexNet(num_classes=num_classes, grouped=grouped, dropout=dropout)


# -- the registry ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchSpec:
    """One `--arch`: how to build it and what it takes.

    `in_channels` and `input_size` are what the network is defined for (the book feeds its networks 1-channel
    Fashion-MNIST images resized to `input_size`); `options` are the `build` keywords a checkpoint's
    ``model_config`` may carry besides ``num_classes`` and ``in_channels``.
    """

    name: str
    build: Callable[..., nn.Module]
    in_channels: int
    input_size: int
    options: tuple[str, ...]
    summary: str


ARCHITECTURES: dict[str, ArchSpec] = {spec.name: spec for spec in (
    ArchSpec("alexnet", paper_alexnet, 3, 224, ("grouped", "dropout"),
             "the paper's network (LRN, grouped conv2/4/5, 3 channels)"),
    ArchSpec("d2l-alexnet", d2l_alexnet, 1, 224, ("dropout",), "the d2l book's AlexNet (1 channel, no LRN, no groups)"),
    ArchSpec("vgg11", vgg11, 1, 224, ("width_divisor", "dropout"), "VGG-11 (the book trains it at 1/4 width)"),
    ArchSpec("nin", nin, 1, 224, ("dropout",), "Network in Network"),
    ArchSpec("googlenet", googlenet, 1, 96, (), "GoogLeNet (Inception blocks)"),
    ArchSpec("resnet18", resnet18, 1, 96, (), "ResNet-18"),
    ArchSpec("densenet", densenet, 1, 96, (), "DenseNet (4 dense blocks of 4 convs, growth rate 32)"),
)}
INIT_SCHEMES = (*ALEXNET_INIT_SCHEMES, "xavier")


class ArchError(ValueError):
    """An architecture or model configuration that does not exist."""


def arch_spec(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ArchError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})") from None


def build_model(arch: str = "alexnet", num_classes: int = 10, in_channels: int | None = None,
                **options) -> nn.Module:
    """An untrained `arch` (PyTorch's default init: call `initialize`), with ``num_classes`` set on it."""
    spec = arch_spec(arch)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ArchError(f"{arch} takes no option(s) {unknown} (it takes: {', '.join(spec.options) or 'none'})")
    in_channels = spec.in_channels if in_channels is None else in_channels
    model = spec.build(num_classes=num_classes, in_channels=in_channels, **options)
    model.num_classes = num_classes
    model.model_config = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels, **options}
    return model


def normalise_model_config(config: dict) -> dict:
    """A checkpoint's ``model_config`` with every key: configs written before `--arch` existed are the paper's
    AlexNet's (``num_classes``, ``grouped``, ``dropout``), on 3 channels."""
    arch = config.get("arch", "alexnet")
    return {"arch": arch, "in_channels": arch_spec(arch).in_channels, **config}


def model_from_config(config: dict) -> nn.Module:
    """A checkpoint's ``model_config`` → the network (untrained: load its state next)."""
    return build_model(**normalise_model_config(config))


def initialize(model: nn.Module, scheme: str) -> None:
    """Initialise weights and biases.

    ``xavier``: Glorot-uniform weights in every conv and linear layer, biases left at PyTorch's default: the d2l
    book's ``train_ch6`` (``init_weights``). ``kaiming``: He-normal weights, zero biases. ``paper`` and
    ``caffe`` are the paper's scheme for its AlexNet (`AlexNet.initialize`); on another network ``paper`` is
    its rule without AlexNet's layer-specific biases: weights N(0, 0.01), biases 0. BatchNorm layers keep
    weight 1, bias 0.
    """
    if isinstance(model, AlexNet) and scheme in ALEXNET_INIT_SCHEMES:
        model.initialize(scheme)
        return
    if scheme not in INIT_SCHEMES:
        raise ArchError(f"unknown init scheme {scheme!r} ({', '.join(INIT_SCHEMES)})")
    if scheme == "caffe":
        raise ArchError("the caffe init is defined for the paper's alexnet only")
    for layer in model.modules():
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            continue
        if scheme == "xavier":
            nn.init.xavier_uniform_(layer.weight)
            continue
        if scheme == "kaiming":
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        else:
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def describe(model: nn.Module) -> dict:
    """Architecture facts for the exported metadata (`alexnet_store.metadata.Architecture`): the paper's AlexNet
    describes itself; another network is named by its `--arch` (and VGG's width divisor, when not 1)."""
    if isinstance(model, AlexNet):
        return model.describe()
    config = getattr(model, "model_config", None)
    if config is None:
        raise ArchError("describe() needs a network made by build_model (it records the architecture)")
    divisor = config.get("width_divisor", 1)
    name = config["arch"] if divisor == 1 else f"{config['arch']} (widths ÷ {divisor})"
    return {"name": name, "num_classes": model.num_classes, "parameters": count_parameters(model)}


class Penultimate(nn.Module):
    """A network as ``x → (logits, features)``: `body` computes the penultimate layer's activations, `head` the
    logits from them, `pool` (NiN, whose last layer is a convolution) averages the body's maps into a vector first.
    In eval mode ``head(body(x))`` is the network's own forward, layer for layer (the dropout between them is the
    identity), so the export's logits are unchanged; training/export.py exports this with two outputs."""

    def __init__(self, body: nn.Module, head: nn.Module, layer: str, pool: bool = False) -> None:
        super().__init__()
        self.body, self.head, self.layer, self.pool = body, head, layer, pool
        self.num_classes = getattr(head, "num_classes", None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(x)
        features = hidden.mean(dim=(2, 3)) if self.pool else hidden
        return self.head(hidden), features


class _AlexNetBody(nn.Module):
    def __init__(self, model: AlexNet) -> None:
        super().__init__()
        self.features, self.hidden = model.features, model.classifier[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(torch.flatten(self.features(x), 1))


def penultimate(model: nn.Module) -> Penultimate:
    """The network split at its penultimate layer (the paper's section 6.1: "the feature activations induced by an
    image at the last, 4096-dimensional hidden layer"):

    - the paper's AlexNet: fc7's output after its ReLU (and the dropout after it, the identity in eval mode): the
      input of fc8;
    - a ``nn.Sequential`` that ends in a linear layer (d2l-alexnet and VGG: the second 4096-unit layer after its
      ReLU; GoogLeNet, ResNet and DenseNet: their global pooling, flattened): that layer's input;
    - NiN, which ends in a NiN block of `num_classes` maps, global average pooling and a flatten: the last block's
      input (384 maps), global average pooled the same way.
    """
    if isinstance(model, AlexNet):
        return Penultimate(_AlexNetBody(model), model.classifier[-1], "fc7 (after ReLU)")
    if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear):
        widths = [m.out_features for m in model if isinstance(m, nn.Linear)]
        layer = (f"the second {widths[-2]}-unit layer (after ReLU)" if len(widths) > 1 else
                 f"the pooled features ({model[-1].in_features})")
        return Penultimate(model[:-1], model[-1], layer)
    if (isinstance(model, nn.Sequential) and len(model) > 3 and isinstance(model[-1], nn.Flatten)
            and isinstance(model[-2], nn.AdaptiveAvgPool2d) and isinstance(model[-3], nn.Sequential)):
        channels = model[-3][0].in_channels
        return Penultimate(model[:-3], model[-3:], f"the last block's input, average pooled ({channels})", pool=True)
    raise ArchError(f"no penultimate layer known for {type(model).__name__}")


def input_shape(model: nn.Module, size: int) -> tuple[int, int, int]:
    """(channels, size, size) of the network's input, from its first convolution."""
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels, size, size
