"""An ONNX Runtime CPU session for the paper network without the layout round trips around its LRN.

On CPUs, ONNX Runtime's `NchwcTransformer` runs every convolution and max-pool in a channel-blocked layout
(NCHWc: 8 channels per block with AVX2, 16 with AVX-512). Elementwise ops it does not know (`Sqrt`, `Div`)
make it convert back to NCHW before them and to NCHWc again after them: three full copies of the largest
activations per LRN (`ReorderOutput` ×2, `ReorderInput`), about a tenth of the network's time.

An elementwise op gives the same result in any layout as long as every tensor operand has the same layout and
shape and any other operand is a scalar, and when the channel count is a multiple of the block size (96 and
256 here) the blocked tensor holds no padding. So this module lets ONNX Runtime optimise the graph, saves
that optimised graph, removes the reorders around such elementwise regions, and opens a session on the result.
It checks the rewritten session against the ordinary one on a random input and falls back to the ordinary
session, with a warning, if anything differs or fails. Nothing is written to the model store: the optimised
graph is specific to this CPU (block size) and this ONNX Runtime version, so it is rebuilt at load.

The service opens its CPU sessions with `cpu_session` (`ALEXNET_CPU_REORDER_ELISION`, on by default), and so
does the benchmark's ceiling, so the two stay comparable. docs/performance.md measures the gain (+7 % fp32).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

log = logging.getLogger(__name__)

NCHWC_DOMAIN = "com.microsoft.nchwc"
ELEMENTWISE = {"Mul", "Div", "Sqrt", "Reciprocal", "Add", "Sub"}
SAFE_CHANNEL_MULTIPLE = 16  # the largest NCHWc block size in MLAS: no padding with either block size


@dataclass
class ElisionReport:
    removed_reorders: int = 0
    blocked_nodes: int = 0
    fallback: str | None = None  # why the ordinary session is used, if it is


def _scalar_initializers(graph: onnx.GraphProto) -> set[str]:
    return {t.name for t in graph.initializer if int(np.prod(t.dims)) == 1}


def elide_reorders(model: onnx.ModelProto) -> tuple[onnx.ModelProto, ElisionReport]:
    """Rewrite an ONNX Runtime-optimised (NCHWc) graph so elementwise regions run on the blocked tensors."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    graph = model_copy.graph
    nodes = list(graph.node)  # ONNX Runtime saves its optimised graph in topological order
    scalars = _scalar_initializers(graph)
    graph_outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            consumers[name].append(node)

    # Blocked sources: NCHW tensors made by ReorderOutput from a padding-free NCHWc tensor.
    blocked_of: dict[str, str] = {}  # NCHW name → the NCHWc tensor it was reordered from
    channels_of: dict[str, int] = {}
    for node in nodes:
        if node.domain == NCHWC_DOMAIN and node.op_type == "ReorderOutput":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            channels = int(attrs.get("channels", 0))
            if channels and channels % SAFE_CHANNEL_MULTIPLE == 0 and not attrs.get("channels_last", 0):
                blocked_of[node.output[0]] = node.input[0]
                channels_of[node.output[0]] = channels

    def region(candidates: set[int]) -> set[int]:
        """Elementwise nodes whose tensor operands are all blocked sources or outputs of the region."""
        chosen: set[int] = set()
        produced: dict[str, int] = {}  # region output → channels
        for i, node in enumerate(nodes):
            if i not in candidates or node.domain not in ("", "ai.onnx") or node.op_type not in ELEMENTWISE:
                continue
            tensors = [n for n in node.input if n not in scalars]
            chans = {channels_of.get(n, produced.get(n)) for n in tensors}
            if tensors and None not in chans and len(chans) == 1:
                chosen.add(i)
                produced[node.output[0]] = chans.pop()
        return chosen

    candidates = set(range(len(nodes)))
    while True:
        chosen = region(candidates)
        outputs = {nodes[i].output[0] for i in chosen}
        bad = set()
        for i in chosen:  # every use of a region output must stay in the region or be a ReorderInput
            out = nodes[i].output[0]
            if out in graph_outputs:
                bad.add(i)
            for user in consumers[out]:
                in_region = any(user is nodes[j] for j in chosen)
                if not in_region and not (user.domain == NCHWC_DOMAIN and user.op_type == "ReorderInput"):
                    bad.add(i)
        if not bad:
            break
        candidates -= bad
    if not chosen:
        return model, ElisionReport()

    removed: set[int] = set()
    for i in chosen:
        node = nodes[i]
        for k, name in enumerate(node.input):
            if name in blocked_of:
                node.input[k] = blocked_of[name]
    for i, node in enumerate(nodes):
        if node.domain == NCHWC_DOMAIN and node.op_type == "ReorderInput" and node.input[0] in outputs:
            for user in consumers[node.output[0]]:
                for k, name in enumerate(user.input):
                    if name == node.output[0]:
                        user.input[k] = node.input[0]
            removed.add(i)
    still_used = {name for i, n in enumerate(nodes) if i not in removed for name in n.input} | graph_outputs
    for i, node in enumerate(nodes):
        if node.domain == NCHWC_DOMAIN and node.op_type == "ReorderOutput" and node.output[0] not in still_used:
            removed.add(i)
    del graph.node[:]
    graph.node.extend(n for i, n in enumerate(nodes) if i not in removed)
    del graph.value_info[:]  # shapes of rewritten tensors changed meaning; ONNX Runtime re-infers
    return model_copy, ElisionReport(removed_reorders=len(removed), blocked_nodes=len(chosen))


def session_options(intra_op_threads: int = 0, config: dict[str, str] | None = None, *,
                    optimized_path: str | None = None, profile_prefix: str | None = None) -> ort.SessionOptions:
    """ORT_ENABLE_ALL (ONNX Runtime's NCHWc transformer only runs at that level), threads, config entries."""
    options = ort.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return options


def _probe_inputs(session: ort.InferenceSession, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in arg.shape]
        if arg.type == "tensor(uint8)":
            feeds[arg.name] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            feeds[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def cpu_session(model: onnx.ModelProto | bytes | str | os.PathLike[str], intra_op_threads: int = 0,
                elide: bool = True, config: dict[str, str] | None = None, tolerance: float = 1e-5,
                profile_prefix: str | None = None) -> tuple[ort.InferenceSession, ElisionReport]:
    """A CPU session at ORT_ENABLE_ALL, with the LRN's layout round trips removed when that is safe.

    `profile_prefix` turns ONNX Runtime's profiler on for the returned session (bench/profile.py).
    """
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
    elif isinstance(model, bytes):
        data = model
    else:
        with open(model, "rb") as fh:
            data = fh.read()

    def open_session(graph: bytes, optimized_path: str | None = None,
                     profile: str | None = profile_prefix) -> ort.InferenceSession:
        options = session_options(intra_op_threads, config, optimized_path=optimized_path, profile_prefix=profile)
        options.log_severity_level = 3  # errors only: saving the NCHWc graph warns it is hardware-specific (it is)
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    if not elide:
        return open_session(data), ElisionReport(fallback="not requested")
    try:
        tmp = tempfile.TemporaryDirectory(prefix="alexnet-ort-")
    except OSError as exc:  # no writable temporary folder (a read-only container without a tmpfs)
        log.warning("reorder elision skipped: %s", exc)
        return open_session(data), ElisionReport(fallback=str(exc))
    with tmp:
        optimized_path = os.path.join(tmp.name, "optimized.onnx")
        plain = open_session(data, optimized_path, profile=None)
        try:
            rewritten, report = elide_reorders(onnx.load(optimized_path))
        except Exception as exc:  # an ONNX Runtime version that saves something else: keep the ordinary one
            log.warning("reorder elision skipped: %s", exc)
            return plain, ElisionReport(fallback=f"rewrite failed: {exc}")
    if not report.removed_reorders:
        report.fallback = "nothing to elide"
        return (open_session(data) if profile_prefix else plain), report
    try:
        fast = open_session(rewritten.SerializeToString())
        feeds = _probe_inputs(plain)
        want, got = plain.run(None, feeds), fast.run(None, feeds)
        for w, g in zip(want, got, strict=True):
            scale = max(float(np.max(np.abs(w))), 1e-12)
            if w.shape != g.shape or not np.isfinite(g).all() or float(np.max(np.abs(w - g))) / scale > tolerance:
                raise ValueError(f"rewritten graph differs from the original (max rel diff "
                                 f"{float(np.max(np.abs(w - g))) / scale:.3g})")
    except Exception as exc:
        log.warning("reorder elision not used: %s", exc)
        return plain, ElisionReport(fallback=str(exc))
    return fast, report
