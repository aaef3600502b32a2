"""The paper's AlexNet: feature-map sizes, parameter counts, grouped connectivity and each init scheme.

(The LRN formula has its own tests in test_lrn.py.)
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.alexnet import (
    ALEXNET_INIT_SCHEMES,
    INPUT_SIZE,
    AlexNet,
    LocalResponseNorm,
    build_alexnet,
    count_parameters,
)


@pytest.fixture(scope="module")
def imagenet_model() -> AlexNet:
    torch.manual_seed(0)
    return build_alexnet(1000).eval()


def test_every_intermediate_shape_matches_the_paper(imagenet_model: AlexNet) -> None:
    """conv1 55 → pool 27 → conv2 27 → pool 13 → conv3/4/5 13 → pool 6, with the paper's channel counts."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda mod, _inp, out: shapes.append((type(mod).__name__, tuple(out.shape))))
             for m in imagenet_model.features if isinstance(m, nn.Conv2d | nn.MaxPool2d)]
    try:
        with torch.no_grad():
            logits = imagenet_model(torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE))
    finally:
        for h in hooks:
            h.remove()
    assert shapes == [
        ("Conv2d", (2, 96, 55, 55)),  # conv1
        ("MaxPool2d", (2, 96, 27, 27)),  # overlapping pool 3/2
        ("Conv2d", (2, 256, 27, 27)),  # conv2
        ("MaxPool2d", (2, 256, 13, 13)),
        ("Conv2d", (2, 384, 13, 13)),  # conv3
        ("Conv2d", (2, 384, 13, 13)),  # conv4
        ("Conv2d", (2, 256, 13, 13)),  # conv5
        ("MaxPool2d", (2, 256, 6, 6)),
    ]
    assert logits.shape == (2, 1000)
    assert [m.out_features for m in imagenet_model.linears()] == [4096, 4096, 1000]
    assert imagenet_model.linears()[0].in_features == 256 * 6 * 6


def test_layer_order_relu_lrn_pool_and_dropout(imagenet_model: AlexNet) -> None:
    kinds = [type(m).__name__ for m in imagenet_model.features]
    assert kinds == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
                     "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
                     "Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    assert [type(m).__name__ for m in imagenet_model.classifier] == [
        "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert all(m.p == 0.5 for m in imagenet_model.classifier if isinstance(m, nn.Dropout))
    pools = [m for m in imagenet_model.features if isinstance(m, nn.MaxPool2d)]
    assert all(p.kernel_size == 3 and p.stride == 2 for p in pools)  # overlapping pooling, s < z
    lrn = [m for m in imagenet_model.features if isinstance(m, LocalResponseNorm)]
    assert [m.hparams() for m in lrn] == [{"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}] * 2


def test_parameter_counts(imagenet_model: AlexNet) -> None:
    assert count_parameters(imagenet_model) == 60_965_224  # the paper's "60 million"
    assert count_parameters(AlexNet(1000, grouped=False)) == 62_378_344  # torchvision/d2l's dense variant
    assert imagenet_model.describe()["parameters"] == 60_965_224


def test_grouped_connectivity_is_the_two_gpu_split() -> None:
    """conv2, conv4, conv5 see half the maps (groups=2); conv1, conv3 and the FC layers see everything."""
    grouped, dense = AlexNet(10).convs(), AlexNet(10, grouped=False).convs()
    assert [c.groups for c in grouped] == [1, 2, 1, 2, 2]
    assert [c.groups for c in dense] == [1] * 5
    assert [tuple(c.weight.shape) for c in grouped] == [
        (96, 3, 11, 11), (256, 48, 5, 5), (384, 256, 3, 3), (384, 192, 3, 3), (256, 192, 3, 3)]
    assert [(c.stride, c.padding) for c in grouped] == [
        ((4, 4), (2, 2)), ((1, 1), (2, 2)), ((1, 1), (1, 1)), ((1, 1), (1, 1)), ((1, 1), (1, 1))]


def _layers(model: AlexNet) -> dict[str, nn.Module]:
    convs, fcs = model.convs(), model.linears()
    return {**{f"conv{i + 1}": c for i, c in enumerate(convs)}, **{f"fc{i + 6}": f for i, f in enumerate(fcs)}}


BIAS_ONE = {"conv2", "conv4", "conv5", "fc6", "fc7"}


@pytest.mark.parametrize("scheme", ALEXNET_INIT_SCHEMES)
def test_init_statistics(scheme: str) -> None:
    torch.manual_seed(0)
    model = build_alexnet(10, init=scheme)
    for name, layer in _layers(model).items():
        w, b = layer.weight.detach(), layer.bias.detach()
        if scheme == "kaiming":
            fan_in = w[0].numel()
            expected_std, expected_bias = math.sqrt(2.0 / fan_in), 0.0
        elif scheme == "caffe":
            expected_std = 0.005 if name in ("fc6", "fc7") else 0.01
            expected_bias = 0.1 if name in BIAS_ONE else 0.0
        else:  # the paper: N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers, 0 elsewhere
            expected_std, expected_bias = 0.01, (1.0 if name in BIAS_ONE else 0.0)
        n = w.numel()
        assert abs(w.mean().item()) < 5 * expected_std / math.sqrt(n), (scheme, name)
        assert w.std().item() == pytest.approx(expected_std, rel=max(0.02, 6 / math.sqrt(2 * n))), (scheme, name)
        assert torch.all(b == expected_bias), (scheme, name)


def test_unknown_init_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown init scheme"):
        AlexNet(10).initialize("xavier")
