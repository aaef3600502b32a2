"""Where the time goes: ONNX Runtime's profiler, per node and per op type, for the ceiling's sessions.

    python -m bench.profile                       # random-init paper network: before / banded / elided / int8
    python -m bench.profile --batch 40 --runs 20 --json bench/results/profile.json

Every node's kernel time is recorded on every run. Two sums are reported: of per-node medians (what a run
took) and of per-node minima, an estimate of the run on an idle machine (another process taking the core
only ever lengthens a node). The roof is estimated the same way: a 4096×4096 by 4096×4096 matmul timed as
four 1024-row slices (the same GEMM shapes per slice), each its fastest of the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import report
from bench.ceiling import CROPS_PER_IMAGE, normalised, patches, sample_jpegs
from bench.roof import GFLOP_PER_TEN_CROP_IMAGE, MatmulRoof


def profile_session(session_factory, feeds: dict[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
    """Run `runs` times with profiling on; per node: op type, and its kernel time (µs) on every run."""
    with tempfile.TemporaryDirectory(prefix="alexnet-prof-") as tmp:
        session: ort.InferenceSession = session_factory(os.path.join(tmp, "prof"))
        session.run(None, feeds)  # warm-up, not counted
        for _ in range(runs):
            session.run(None, feeds)
        path = session.end_profiling()
        events = json.loads(Path(path).read_text())
    nodes: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            node = nodes.setdefault(name, {"node": name, "op": e["args"].get("op_name", "?"), "us": []})
            node["us"].append(e["dur"])
    for node in nodes.values():
        node["us"] = node["us"][-runs:]  # drop the warm-up (and any self-check run before it)
    return [n for n in nodes.values() if n["us"]]


def summarise_nodes(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    by_op_min: dict[str, float] = defaultdict(float)
    by_op_med: dict[str, float] = defaultdict(float)
    for n in nodes:
        by_op_min[n["op"]] += min(n["us"]) / 1000
        by_op_med[n["op"]] += statistics.median(n["us"]) / 1000
    total_min, total_med = sum(by_op_min.values()), sum(by_op_med.values())
    return {
        "ms_min_sum": total_min, "ms_median_sum": total_med,
        "by_op": {op: {"ms_min": by_op_min[op], "ms_median": by_op_med[op], "share": by_op_min[op] / total_min}
                  for op in sorted(by_op_min, key=lambda o: -by_op_min[o])},
        "nodes": [{"node": n["node"], "op": n["op"], "ms_min": min(n["us"]) / 1000,
                   "ms_median": statistics.median(n["us"]) / 1000} for n in nodes],
    }


def matmul_roof_min(runs: int, n: int = 4096, slices: int = 4, threads: int = 0) -> float:
    """GFLOP/s of an n×n·n×n matmul timed in `slices` row slices, each at its fastest over `runs`."""
    timer = MatmulRoof(n=n, intra_op_threads=threads)
    rows = n // slices
    parts = [np.ascontiguousarray(timer.a[i * rows:(i + 1) * rows]) for i in range(slices)]
    best = [float("inf")] * slices
    for _ in range(runs):
        for i, part in enumerate(parts):
            start = time.perf_counter()
            timer.session.run(None, {"a": part, "b": timer.b})
            best[i] = min(best[i], time.perf_counter() - start)
    return timer.flop / sum(best) / 1e9


def main(argv: Sequence[str] | None = None) -> int:
    from bench.references import build_models
    from service.session import cpu_session

    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=40)
    p.add_argument("--runs", type=int, default=12)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    result: dict[str, Any] = {"environment": report.environment(), "batch": args.batch, "runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="alexnet-prof-models-") as tmp:
        built = build_models(Path(tmp), args.classes, log=log)
        fp32, int8 = built["fp32"], built["int8"]
        x = normalised(fp32, patches(fp32, args.batch, sample_jpegs()))
        variants = [("fp32, LRN as PyTorch exports it (before)", built["plain_onnx"], False),
                    ("fp32, banded LRN", fp32.onnx_path, False),
                    ("fp32, banded LRN, reorders elided", fp32.onnx_path, True),
                    ("int8 (QDQ)", int8.onnx_path, False)]
        log("estimating the roof ...")
        result["roof_gflops_min_estimate"] = matmul_roof_min(max(3, args.runs // 2), threads=args.threads)
        roof_images = result["roof_gflops_min_estimate"] / GFLOP_PER_TEN_CROP_IMAGE
        result["variants"] = []
        for label, path, elide in variants:
            log(f"profiling {label} ...")
            nodes = profile_session(lambda prefix, path=path, elide=elide: cpu_session(
                path, intra_op_threads=args.threads, elide=elide, profile_prefix=prefix)[0], {"input": x}, args.runs)
            s = summarise_nodes(nodes)
            s["label"] = label
            s["images_per_s_min_estimate"] = args.batch / CROPS_PER_IMAGE / (s["ms_min_sum"] / 1000)
            s["x_roof_min_estimate"] = s["images_per_s_min_estimate"] / roof_images
            result["variants"].append(s)
    result["environment"]["load_average_end"] = report.load()
    print_profile(result)
    path = report.write_json(result, args.json, "profile")
    print(f"\nJSON: {path}")
    return 0


def print_profile(result: dict[str, Any]) -> None:
    env = result["environment"]
    roof = result["roof_gflops_min_estimate"]
    print(f"CPU: {env['cpu']} ({env['cpu_isa']}); load {env['load_average'][0]:.2f} → "
          f"{env['load_average_end']:.2f}; batch {result['batch']}, {result['runs']} runs")
    print(f"roof (idle estimate): {roof:.0f} GFLOP/s → {roof / GFLOP_PER_TEN_CROP_IMAGE:.2f} images/s")
    rows = [[v["label"], v["ms_min_sum"], v["ms_median_sum"], v["images_per_s_min_estimate"],
             v["x_roof_min_estimate"]] for v in result["variants"]]
    print(report.table(rows, ["session", "ms/run (Σ node min)", "ms/run (Σ node median)", "img/s (idle est.)",
                              "× roof (idle est.)"]))
    ops = sorted({op for v in result["variants"] for op in v["by_op"]},
                 key=lambda o: -max(v["by_op"].get(o, {}).get("ms_min", 0) for v in result["variants"]))
    rows = [[op] + [f"{v['by_op'][op]['ms_min']:.1f} ({100 * v['by_op'][op]['share']:.0f}%)"
                    if op in v["by_op"] else "" for v in result["variants"]] for op in ops]
    print()
    print(report.table(rows, ["op type: ms (share)"] + [v["label"].split(",")[0] + (
        "," + v["label"].split(",", 1)[1][:22] if "," in v["label"] else "") for v in result["variants"]]))


if __name__ == "__main__":
    sys.exit(main())
