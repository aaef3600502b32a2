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

import contextlib
import logging
import os
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

log = logging.getLogger(__name__)

NCHWC_DOMAIN = "com.microsoft.nchwc"
ELEMENTWISE = {"Mul", "Div", "Sqrt", "Reciprocal", "Add", "Sub"}
SAFE_CHANNEL_MULTIPLE = 16  # the largest NCHWc block size in MLAS: no padding with either block size
LOW_PRIORITY_NICE = 10  # the weight of nice 10 is a tenth of nice 0's: what serving leaves, not what it needs


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


Prepare = Callable[..., Any]  # runs fn(*args) and returns its result: directly, or in a low-priority thread


def run_here(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def low_priority(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` in a thread of its own at nice +10, and return its result (or raise its error).

    Loading a new version while the service serves (a rollover) competes with serving for the cores: measured,
    a 1,000-class version's 4 s of single-threaded work (checksum, serving graph, ONNX Runtime's graph
    optimisation, the reorder rewrite) doubled the p99 of the requests in flight on a 2-core machine. Done at a
    lower priority, it takes what serving leaves. Only work that starts no threads may run here: threads inherit
    their creator's nice value, and an unprivileged process cannot lower it again, so the serving session (whose
    intra-op threads are created with it) is opened by the caller at normal priority. On Linux a thread's nice
    value is its own (setpriority with its thread id); where that fails, `fn` simply runs at normal priority."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_PRIORITY_NICE)
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="alexnet-load-low-priority")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@dataclass
class PreparedGraph:
    """What the low-priority part of opening a CPU session produced: the graph to open and how to check it."""

    data: bytes  # the rewritten graph (or the original, when nothing was elided)
    report: ElisionReport
    feeds: dict[str, np.ndarray] | None = None  # probe inputs, and the ordinary session's outputs on them
    expected: list[np.ndarray] | None = None


def prepare_cpu_graph(data: bytes, config: dict[str, str] | None, elide: bool = True) -> PreparedGraph:
    """Optimise the graph with ONNX Runtime (one thread: no thread pool is started), rewrite it without the
    LRN's layout round trips, and run the ordinary optimised session once on a probe input to check against."""
    if not elide:
        return PreparedGraph(data, ElisionReport(fallback="not requested"))
    try:
        tmp = tempfile.TemporaryDirectory(prefix="alexnet-ort-")
    except OSError as exc:  # no writable temporary folder (a read-only container without a tmpfs)
        log.warning("reorder elision skipped: %s", exc)
        return PreparedGraph(data, ElisionReport(fallback=str(exc)))
    with tmp:
        optimized_path = os.path.join(tmp.name, "optimized.onnx")
        options = session_options(1, config, optimized_path=optimized_path)
        options.log_severity_level = 3  # errors only: saving the NCHWc graph warns it is hardware-specific (it is)
        plain = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        try:
            rewritten, report = elide_reorders(onnx.load(optimized_path))
        except Exception as exc:  # an ONNX Runtime version that saves something else: keep the ordinary one
            log.warning("reorder elision skipped: %s", exc)
            return PreparedGraph(data, ElisionReport(fallback=f"rewrite failed: {exc}"))
    if not report.removed_reorders:
        report.fallback = "nothing to elide"
        return PreparedGraph(data, report)
    feeds = _probe_inputs(plain)
    return PreparedGraph(rewritten.SerializeToString(), report, feeds, plain.run(None, feeds))


def cpu_session(model: onnx.ModelProto | bytes | str | os.PathLike[str], intra_op_threads: int = 0,
                elide: bool = True, config: dict[str, str] | None = None, tolerance: float = 1e-5,
                profile_prefix: str | None = None, prepare: Prepare = run_here
                ) -> tuple[ort.InferenceSession, ElisionReport]:
    """A CPU session at ORT_ENABLE_ALL, with the LRN's layout round trips removed when that is safe.

    `prepare` runs the part that starts no threads (`prepare_cpu_graph`), e.g. at low priority; the session
    itself, with its intra-op thread pool, is opened here. `profile_prefix` turns ONNX Runtime's profiler on for
    the returned session (bench/profile.py).
    """
    (session,), report = cpu_sessions(model, [intra_op_threads], elide=elide, config=config, tolerance=tolerance,
                                      profile_prefix=profile_prefix, prepare=prepare)
    return session, report


def cpu_sessions(model: onnx.ModelProto | bytes | str | os.PathLike[str], thread_counts: Sequence[int], *,
                 elide: bool = True, config: dict[str, str] | None = None, tolerance: float = 1e-5,
                 profile_prefix: str | None = None, prepare: Prepare = run_here
                 ) -> tuple[list[ort.InferenceSession], ElisionReport]:
    """One CPU session per entry of `thread_counts` (its intra-op threads), all over the one graph prepared and
    checked once (`cpu_session`): the sessions of an instance group (service/model.py)."""
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
    elif isinstance(model, bytes):
        data = model
    else:
        with open(model, "rb") as fh:
            data = fh.read()

    def open_session(graph: bytes, threads: int) -> ort.InferenceSession:
        options = session_options(threads, config, profile_prefix=profile_prefix)
        options.log_severity_level = 3
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    prepared: PreparedGraph = prepare(prepare_cpu_graph, data, config, elide)
    if prepared.feeds is None:  # nothing rewritten
        return [open_session(data, t) for t in thread_counts], prepared.report
    try:
        fast = open_session(prepared.data, thread_counts[0])
        got = fast.run(None, prepared.feeds)
        for w, g in zip(prepared.expected, got, strict=True):
            scale = max(float(np.max(np.abs(w))), 1e-12)
            if w.shape != g.shape or not np.isfinite(g).all() or float(np.max(np.abs(w - g))) / scale > tolerance:
                raise ValueError(f"rewritten graph differs from the original (max rel diff "
                                 f"{float(np.max(np.abs(w - g))) / scale:.3g})")
    except Exception as exc:
        log.warning("reorder elision not used: %s", exc)
        return [open_session(data, t) for t in thread_counts], ElisionReport(fallback=str(exc))
    return [fast] + [open_session(prepared.data, t) for t in thread_counts[1:]], prepared.report


def physical_cores() -> int:
    """The physical cores this process may run on: the CPUs of its affinity mask (a container's cpuset), counted
    once per core (SMT siblings share one). What an instance group is sized by: two threads on the two hyperthreads
    of one core run little faster than one. Falls back to the CPU count where the kernel does not say."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id") as fh:
                core = fh.read().strip()
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id") as fh:
                package = fh.read().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))
