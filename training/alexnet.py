"""AlexNet as Krizhevsky, Sutskever & Hinton (2012) describe it.

Where this differs from the paper, and why (also in docs/paper-fidelity.md):
- Input 224×224 with conv1 padded by 2. The paper says 224 but its 55×55 conv1 maps need 227 without
  padding; Caffe feeds 227, torchvision pads. Padding keeps the paper's 224 crops (and its ten-crop
  test procedure on 256×256 images) and every feature-map size (55, 27, 13, 13, 13, 6).
- One device. The two-GPU split is kept as *connectivity*: conv2, conv4 and conv5 see only their own
  half of the previous layer's maps (``groups=2``), which is what gives the paper's ~61 M parameters.
  ``grouped=False`` gives the d2l/torchvision simplification (~62.4 M).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from alexnet_store.vocabulary import CROP_SIZE

# The paper's LRN hyper-parameters (section 3.3).
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_K = 2.0

INPUT_SIZE = CROP_SIZE


class LocalResponseNorm(nn.Module):
    """b_i = a_i / (k + α Σ_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j²)^β — the paper's formula, α *not* divided by n.

    One formula, two ways of computing it (both tested against the formula written out, tests/test_lrn.py):

    - eager (training, evaluation in PyTorch): ``F.local_response_norm``, which divides α by n like
      ``torch.nn.LocalResponseNorm``, ONNX's ``LRN`` and Caffe, so the faithful call passes α·n to it;
    - export (``torch.onnx.export`` / ``torch.export``): `forward_export`, the window sum of a² as a banded 1×1
      convolution (weight α where |i−j| ≤ n/2, bias k) and, for the paper's β = 3/4, the power as
      a / (√s·√√s). ONNX Runtime runs these as its blocked (NCHWc) convolution and vectorised Sqrt/Div; the
      plain export's Pad + 3-D AveragePool + Pow (a scalar ``std::pow`` per element) cost a quarter of the
      network's time, ONNX's own ``LRN`` op almost half (docs/performance.md).
    """

    def __init__(self, size: int = LRN_SIZE, alpha: float = LRN_ALPHA, beta: float = LRN_BETA,
                 k: float = LRN_K) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        # What export writes: "banded" (fast in ONNX Runtime), or "eager" (PyTorch's own decomposition of
        # F.local_response_norm; only the benchmark's before/after comparison uses it).
        self.export_form = "banded"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exporting = torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
        if exporting and self.export_form == "banded":
            return self.forward_export(x)
        return self.forward_eager(x)

    def forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        return F.local_response_norm(x, self.size, alpha=self.alpha * self.size, beta=self.beta, k=self.k)

    def window_weight(self, channels: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | None = None) -> torch.Tensor:
        """[C, C, 1, 1]: α where output channel i sums input channel j (|i−j| ≤ n/2), else 0."""
        # Built from Python numbers, not torch ops, so export records it as a constant (an initializer).
        half = self.size // 2
        band = [[[[self.alpha if abs(i - j) <= half else 0.0]] for j in range(channels)] for i in range(channels)]
        return torch.tensor(band, dtype=dtype, device=device)

    def forward_export(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        bias = torch.full((channels,), self.k, dtype=x.dtype, device=x.device)
        s = F.conv2d(x * x, self.window_weight(channels, x.dtype, x.device), bias)  # k + α Σ a_j²  (≥ k > 0)
        if self.beta == 0.75:
            root = torch.sqrt(s)
            return x / (root * torch.sqrt(root))  # s^¾ = √s · √√s
        if self.beta == 0.5:
            return x / torch.sqrt(s)
        return x / s.pow(self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha} (paper's, not divided by n), beta={self.beta}, k={self.k}"

    def hparams(self) -> dict[str, float]:
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, grouped: bool = True, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.grouped = grouped
        g = 2 if grouped else 1
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2),  # conv1: 3×224×224 → 96×55×55
            nn.ReLU(inplace=True),
            LocalResponseNorm(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # overlapping pooling → 27×27
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=g),  # conv2 → 256×27×27
            nn.ReLU(inplace=True),
            LocalResponseNorm(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # → 13×13
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # conv3 sees both halves → 384×13×13
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=g),  # conv4
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=g),  # conv5
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # → 256×6×6
        )
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),  # fc8
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.classifier if isinstance(m, nn.Linear)]

    def initialize(self, scheme: str = "paper") -> None:
        """Initialise weights and biases.

        ``paper``: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and fc6, fc7, 0 elsewhere.
        ``caffe``: the same but biases 0.1 where the paper has 1 (Caffe's replication: with 1 the loss
        stayed flat), and N(0, 0.005) for fc6/fc7.
        ``kaiming``: He-normal weights and zero biases, for quick convergence on small data sets.
        """
        convs, fcs = self.convs(), self.linears()
        ones = {convs[1], convs[3], convs[4], fcs[0], fcs[1]}
        for layer in convs + fcs:
            if scheme == "kaiming":
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
                continue
            std = 0.005 if scheme == "caffe" and layer in (fcs[0], fcs[1]) else 0.01
            nn.init.normal_(layer.weight, mean=0.0, std=std)
            if scheme == "paper":
                nn.init.constant_(layer.bias, 1.0 if layer in ones else 0.0)
            elif scheme == "caffe":
                nn.init.constant_(layer.bias, 0.1 if layer in ones else 0.0)
            else:
                raise ValueError(f"unknown init scheme {scheme!r} ({', '.join(ALEXNET_INIT_SCHEMES)})")

    def describe(self) -> dict:
        """Architecture facts that go into the exported metadata."""
        lrn = next(m for m in self.features if isinstance(m, LocalResponseNorm))
        return {
            "name": "alexnet-krizhevsky2012",
            "num_classes": self.num_classes,
            "parameters": count_parameters(self),
            "grouped": self.grouped,
            "lrn": lrn.hparams(),
        }


# The init schemes the paper's AlexNet defines for itself; training/architectures.py adds the d2l book's xavier.
ALEXNET_INIT_SCHEMES = ("paper", "caffe", "kaiming")


def build_alexnet(num_classes: int, grouped: bool = True, init: str = "paper", dropout: float = 0.5) -> AlexNet:
    model = AlexNet(num_classes=num_classes, grouped=grouped, dropout=dropout)
    model.initialize(init)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
