"""Measuring side by side, and reporting: interleaved rounds, medians and bests, a table and a JSON file.

Benchmarks here share machines with other work, so nothing is timed alone: every case runs once per round,
in an order that rotates from round to round, and a number is reported with the load average beside it.
The median says what a run typically took; the best says what the code can do when nothing else runs
(contention only ever slows a run down). Ratios are taken within a round (paired), then their median.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench/results")


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)  # seconds per call
    cpu: list[float] = field(default_factory=list)  # process CPU seconds per call (all threads)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def best(self) -> float:
        return min(self.wall)


def interleave(cases: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
               progress: Callable[[str], None] | None = None) -> dict[str, Samples]:
    """Call every case once per round, rotating the order; `warmup` untimed rounds first."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    samples = {name: Samples() for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            cases[name]()
            samples[name].wall.append(time.perf_counter() - wall)
            samples[name].cpu.append(time.process_time() - cpu)
        if progress:
            progress(f"round {r + 1}/{rounds} done (load {load():.2f})")
    return samples


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i]."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def environment() -> dict[str, Any]:
    import numpy
    import onnxruntime

    from bench.roof import cpu_info

    info = cpu_info()
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpu": info.model,
        "cpu_isa": info.isa,
        "cpu_flags": info.flags,
        "cpus": info.usable_cpus,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_json(data: dict[str, Any], path: Path | None, stem: str) -> Path:
    if path is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{stem}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
