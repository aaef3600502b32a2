"""The benchmark's reference pieces that are cheap to check: roof helpers, interleaved timing, the table,
the reorder-eliding session (same outputs as the ordinary one), and the ceiling's inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench import report
from bench.roof import GFLOP_PER_TEN_CROP_IMAGE, MatmulRoof, cpu_info
from service.session import cpu_session, elide_reorders


def test_roof_constants_and_cpu_info() -> None:
    assert abs(GFLOP_PER_TEN_CROP_IMAGE - 14.49) < 0.005
    info = cpu_info()
    assert info.model and info.usable_cpus >= 1 and info.isa
    timer = MatmulRoof(n=128)
    assert timer.ort() > 0 and timer.numpy() > 0


def test_interleave_rotates_and_pairs() -> None:
    calls: list[str] = []
    samples = report.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3,
                                warmup=0)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert all(len(s.wall) == 3 and len(s.cpu) == 3 for s in samples.values())
    assert report.paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0
    text = report.table([["x", 1.23456, 12.5]], ["name", "a", "b"])
    assert "1.235" in text and "12.5" in text and text.count("\n") == 2


def test_reorder_elision_keeps_the_outputs(exported) -> None:
    """On the serving graph (network inside): the rewritten session answers like ONNX Runtime's own."""
    from service.graph import GRAPH_INPUT, build_serving_model

    _root, version, _model = exported
    serving = build_serving_model(onnx.load(str(version.onnx_path)), version.metadata)
    feed = {GRAPH_INPUT: np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)}
    plain = ort.InferenceSession(serving.SerializeToString(), providers=["CPUExecutionProvider"])
    fast, elided = cpu_session(serving)
    assert elided.fallback in (None, "nothing to elide"), elided
    wanted, gotten = plain.run(None, feed), fast.run(None, feed)
    assert [o.name for o in fast.get_outputs()] == [o.name for o in plain.get_outputs()]  # probabilities, features
    for want, got in zip(wanted, gotten, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if elided.fallback is None:  # this CPU runs convolutions in NCHWc: the LRNs' 3 reorders each are gone
        assert elided.removed_reorders == 6 and elided.blocked_nodes == 8


def test_elision_leaves_graphs_without_reorders_alone() -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    same, info = elide_reorders(model)
    assert same is model and info.removed_reorders == 0
    session, info = cpu_session(model)
    assert info.fallback == "nothing to elide"
    np.testing.assert_allclose(session.run(None, {"x": np.full((1, 4), 4.0, np.float32)})[0], 2.0)


def test_ceiling_inputs_are_real_crops_tiled_to_the_batch(exported) -> None:
    from bench.ceiling import normalised, patches, sample_jpegs

    _root, version, _model = exported
    jpegs = sample_jpegs(2, None)
    x = patches(version, 25, jpegs)
    assert x.shape == (25, 224, 224, 3) and x.dtype == np.uint8 and x.std() > 10
    np.testing.assert_array_equal(x[20], x[0])  # 2 photos × 10 crops, then again
    f = normalised(version, x[:2])
    assert f.shape == (2, 3, 224, 224) and f.dtype == np.float32
    pre = version.metadata.preprocessing
    assert f[0, 0, 0, 0] == pytest.approx((x[0, 0, 0, 0] / 255 - pre.mean[0]) / pre.std[0], rel=1e-5)
