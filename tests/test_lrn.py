"""The paper's local response normalisation, checked against its formula written out with explicit loops.

    b_i = a_i / (k + α Σ_{j=max(0, i−n/2)}^{min(N−1, i+n/2)} a_j²)^β,   k = 2, n = 5, α = 1e-4 (not ÷ n), β = 0.75

Both ways the layer computes it (PyTorch eager for training, the banded form that export writes) and the
exported ONNX graph run in ONNX Runtime must match it, edge channels included.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.alexnet import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, LocalResponseNorm

RTOL = 2e-5  # float32 against a float64 reference


def paper_lrn(a: np.ndarray, n: int = LRN_SIZE, alpha: float = LRN_ALPHA, beta: float = LRN_BETA,
              k: float = LRN_K) -> np.ndarray:
    """The formula of section 3.3, one channel and one window term at a time, in float64."""
    a = a.astype(np.float64)
    channels = a.shape[1]
    b = np.empty_like(a)
    for i in range(channels):
        total = np.zeros_like(a[:, 0])
        for j in range(max(0, i - n // 2), min(channels - 1, i + n // 2) + 1):
            total += a[:, j] ** 2
        b[:, i] = a[:, i] / (k + alpha * total) ** beta
    return b


def activations(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """ReLU outputs large enough that α·Σa² is comparable to k (else any LRN would pass as the identity)."""
    rng = np.random.default_rng(seed)
    a = np.maximum(rng.normal(0.0, 60.0, size=shape), 0.0)
    a[:, 0] *= 3.0  # edge channels with the largest values, so a wrong window at the edges shows
    a[:, -1] *= 3.0
    return a.astype(np.float32)


SHAPES = [(2, 96, 7, 5), (1, 256, 3, 3), (3, 7, 4, 4), (2, 3, 2, 2), (1, 1, 2, 3)]


def test_reference_is_the_paper_formula_not_torchs_alpha_over_n() -> None:
    """Sanity of the reference itself: one hand-computed channel, and α not divided by n."""
    a = np.zeros((1, 4, 1, 1), np.float32)
    a[0, :, 0, 0] = [100.0, 200.0, 0.0, 50.0]
    b = paper_lrn(a)
    # channel 0 sees channels 0..2: k + α(100² + 200² + 0²) = 2 + 5 = 7
    assert b[0, 0, 0, 0] == pytest.approx(100.0 / 7.0**0.75, rel=1e-12)
    # channel 3 sees channels 1..3: 2 + 1e-4·(200² + 0 + 50²) = 6.25
    assert b[0, 3, 0, 0] == pytest.approx(50.0 / 6.25**0.75, rel=1e-12)
    torch_default = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(torch.from_numpy(a)).numpy()
    assert not np.allclose(torch_default, b, rtol=1e-3)  # torch's α/n would be a different layer


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("form", ["forward", "forward_eager", "forward_export"])
def test_pytorch_layer_matches_the_formula(shape: tuple[int, ...], form: str) -> None:
    a = activations(shape, seed=sum(shape))
    layer = LocalResponseNorm()
    with torch.no_grad():
        got = getattr(layer, form)(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(got, paper_lrn(a), rtol=RTOL, atol=0)


def test_other_hyper_parameters_follow_the_formula_too() -> None:
    a = activations((2, 11, 3, 3), seed=7)
    for hp in [dict(size=3, alpha=2e-4, beta=0.5, k=1.0), dict(size=7, alpha=5e-5, beta=0.6, k=3.0)]:
        layer = LocalResponseNorm(**hp)
        want = paper_lrn(a, n=hp["size"], alpha=hp["alpha"], beta=hp["beta"], k=hp["k"])
        with torch.no_grad():
            for form in (layer.forward_eager, layer.forward_export):
                np.testing.assert_allclose(form(torch.from_numpy(a)).numpy(), want, rtol=RTOL, atol=0)


@pytest.fixture(scope="module")
def lrn_onnx(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    path = tmp_path_factory.mktemp("lrn") / "lrn.onnx"
    torch.onnx.export(LocalResponseNorm().eval(), (torch.ones(2, 96, 5, 5),), str(path), dynamo=True,
                      opset_version=18, input_names=["a"], output_names=["b"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch"), 2: torch.export.Dim("h"),
                                            3: torch.export.Dim("w")}})
    return onnx.load(str(path))


def test_exported_onnx_graph_in_onnx_runtime_matches_the_formula(lrn_onnx: onnx.ModelProto) -> None:
    ops = {n.op_type for n in lrn_onnx.graph.node}
    assert "Conv" in ops and not ops & {"Pow", "AveragePool", "LRN"}, ops  # the banded form, not the plain one
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(lrn_onnx.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for shape in [(2, 96, 5, 5), (1, 96, 55, 55), (3, 96, 1, 2)]:
            a = activations(shape, seed=shape[0] + shape[2])
            (got,) = session.run(None, {"a": a})
            np.testing.assert_allclose(got, paper_lrn(a), rtol=RTOL, atol=0)


def test_the_whole_exported_network_uses_the_banded_form(exported) -> None:
    _root, version, _model = exported
    ops = [n.op_type for n in onnx.load(str(version.onnx_path)).graph.node]
    assert set(ops) <= {"Conv", "Relu", "Mul", "Sqrt", "Div", "MaxPool", "Reshape", "Flatten", "Gemm"}, set(ops)
    assert ops.count("Conv") == 7  # five layers + two window sums, whose weights are initializers
    assert ops.count("Sqrt") == 4
