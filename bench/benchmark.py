"""`alexnet-bench`: the service against its ceiling and against the naive baseline, in one run.

    alexnet-bench                       # random-init paper network (1000 classes) in a temporary store
    alexnet-bench --int8 --plot bench.png
    alexnet-bench --model-store model_store --model-name alexnet --int8
    alexnet-bench --quick               # a short smoke run (concurrency 1 and 16, a few seconds each)
    alexnet-bench --peers               # also LitServe and TorchServe on the same model (the peers extra)

What one run does, on this machine:
1. starts `alexnet-serve` (real uvicorn) on the fp32 model — and on its int8 version with ``--int8`` — and the
   naive baseline, bench/naive_baseline.py (FastAPI + eager PyTorch + TenCrop) under uvicorn;
2. for ``crops=ten`` and ``crops=center`` and each concurrency, drives each server in turn with the load
   generator (bench/loadgen.py, a separate process) over loopback; the service's /metrics give the batch it
   used, and right after each service level the ceiling is measured: a bare ONNX Runtime session
   (bench/ceiling.py) on already-preprocessed crops at that batch. Taking the two side by side keeps the
   ratio fair on a machine whose load drifts; at concurrency 1 the ceiling is the model's own time for one
   image;
3. with ``--peers``, serves the same model with LitServe and TorchServe (bench/peers.py: its fairness rules), each
   alone and once per crops mode, checks each one's top 5 against the service's, and drives it at every level
   right after the service at that level: service ÷ peer;
4. measures the fp32 matmul roof (bench/roof.py) for context.
It prints a table with the ratios, the CPU and its flags, and the load average, writes JSON (default
bench/results/benchmark-<time>.json) and, with --plot, a PNG of throughput and p99 against concurrency.
docs/benchmark.md explains each column.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_store import ModelStore, ModelVersion, StoreError
from bench import peers, report
from bench.ceiling import CROPS_PER_IMAGE as TEN_CROPS
from bench.ceiling import SHARED_SAMPLES, patches, sample_jpegs, serving_case
from bench.loadgen import percentile
from bench.rollover import measure_rollover
from service.settings import Settings

PROG = "alexnet-bench"
CROPS_PER_IMAGE = {"ten": TEN_CROPS, "center": 1}
TARGET_CONCURRENCY = 16


# -- inputs -----------------------------------------------------------------------------------------------
def generated_images(directory: Path, count: int = 16) -> Path:
    """JPEGs of ImageNet-like sizes cut from scikit-learn's two photographs (when no real samples are at hand)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    sizes = [(500, 375), (375, 500), (500, 333), (640, 480), (500, 500), (800, 600), (333, 500), (1024, 768)]
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = sizes[i % len(sizes)]
        left, top = (i * 37) % (photo.width // 4), (i * 23) % (photo.height // 4)
        img = photo.crop((left, top, photo.width - left, photo.height - top)).resize((w, h))
        if i % 3 == 1:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(directory / f"generated_{i:02d}.jpg", quality=90)
    return directory


def image_folder(requested: Path | None, workdir: Path) -> Path:
    if requested is not None:
        return requested
    if SHARED_SAMPLES.is_dir() and any(SHARED_SAMPLES.iterdir()):
        return SHARED_SAMPLES
    return generated_images(workdir / "images")


@dataclass
class Models:
    fp32: ModelVersion
    int8: ModelVersion | None


def resolve_models(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> Models:
    if args.model_store is None:
        from bench.references import build_models

        log("exporting a random-init paper network (1000 classes) into a temporary store ...")
        built = build_models(workdir, num_classes=1000, int8=args.int8, log=log)
        return Models(built["fp32"], built["int8"])
    store = ModelStore(args.model_store)
    name = store.resolve(args.model_name).name  # the only model, when no name is given
    fp32 = store.resolve(name, args.model_version) if args.model_version else store.newest(name, "fp32")
    if fp32.metadata.precision != "fp32":
        raise StoreError(f"{fp32.path} is {fp32.metadata.precision}; pass the --model-version of an fp32 version")
    int8 = None
    if args.int8_version:
        int8 = store.resolve(name, args.int8_version)
    elif args.int8:
        try:
            int8 = store.newest(name, "int8")
        except StoreError as exc:
            raise StoreError(f"{exc}; make one with `python -m training.quantize --model-store {store.root} "
                             f"--name {name}`") from exc
    return Models(fp32, int8)


# -- servers ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def console_script(name: str, module: str) -> list[str]:
    exe = shutil.which(name, path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", module]


@dataclass(frozen=True)
class Endpoint:
    """A server process started here: where it answers, and its pid (for its memory, in bench/stress.py)."""

    url: str
    pid: int


@contextlib.contextmanager
def server(command: list[str], ready_path: str, ready: Callable[[Any], bool], log_path: Path, port: int,
           env: dict[str, str], timeout: float = 300) -> Iterator[Endpoint]:
    """Start a server process, wait until `ready_path` says so, yield where it answers; always stop it."""
    import httpx

    url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, **env}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log_path, "w") as fh:
        process = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=environment,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} not ready after {timeout:.0f} s:\n{_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(url + ready_path, timeout=5)
                if r.status_code == 200 and ready(r.json()):
                    break
            time.sleep(0.2)
        yield Endpoint(url, process.pid)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def service_server(version: ModelVersion, workdir: Path, env: dict[str, str], label: str,
                   policy: str | None = None) -> contextlib.AbstractContextManager:
    """alexnet-serve on `version`'s store, serving that version only (or as `policy` says)."""
    port = free_port()
    command = [*console_script("alexnet-serve", "service.cli"), "--model-store", str(version.path.parent.parent),
               "--models", version.name, "--version-policy", policy or f"specific:{version.version}", "--host",
               "127.0.0.1", "--port", str(port)]
    env = {"ALEXNET_LOG_LEVEL": "warning", **env}
    log_path = workdir / f"{label.replace(' ', '-')}.log"
    return server(command, "/health/ready", lambda _body: True, log_path, port, env)


def baseline_server(workdir: Path) -> contextlib.AbstractContextManager:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.naive_baseline:app", "--host", "127.0.0.1", "--port",
               str(port), "--log-level", "warning"]
    return server(command, "/health", lambda body: body.get("status") == "ok", workdir / "baseline.log", port,
                  {"ALEXNET_BASELINE_CLASSES": "1000"})


# -- driving ----------------------------------------------------------------------------------------------
@dataclass
class Plan:
    concurrency: list[int]
    crops: list[str]
    duration: float
    max_requests: int
    ceiling_seconds: float


def loadgen_command(url: str, images: Path, concurrency: int, crops: str, duration: float, max_requests: int,
                    protocol: str = "predict", model: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "bench.loadgen", "--url", url, "--images", str(images), "--concurrency",
               str(concurrency), "--crops", crops, "--duration", str(duration), "--max-requests", str(max_requests),
               "--protocol", protocol]
    return command + (["--model", model] if model else [])


def load_level(url: str, images: Path, concurrency: int, crops: str, plan: Plan, protocol: str = "predict",
               model: str | None = None) -> dict[str, Any]:
    """One concurrency level, driven from a separate process (bench/loadgen.py)."""
    import json

    command = loadgen_command(url, images, concurrency, crops, plan.duration, plan.max_requests, protocol, model)
    done = subprocess.run(command, capture_output=True, text=True, timeout=plan.duration + 600)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


_METRIC_LINE = re.compile(r"^(alexnet_inference_(?:batch_patches|batch_requests|queue_seconds|duration_seconds)"
                          r"_(?:sum|count))\s+(\S+)$", re.M)


def scrape(url: str) -> dict[str, float]:
    """The service's batching counters (histogram sums and counts) from /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    return {m.group(1): float(m.group(2)) for m in _METRIC_LINE.finditer(text)}


def batching_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def mean(stem: str) -> float:
        count = delta(f"alexnet_inference_{stem}_count")
        return delta(f"alexnet_inference_{stem}_sum") / count if count else math.nan

    return {"runs": delta("alexnet_inference_batch_patches_count"), "mean_batch_patches": mean("batch_patches"),
            "mean_batch_requests": mean("batch_requests"), "mean_queue_ms": 1000 * mean("queue_seconds"),
            "mean_run_ms": 1000 * mean("duration_seconds")}


# -- the ceiling ------------------------------------------------------------------------------------------
class Ceiling:
    """Bare ONNX Runtime sessions of the serving graph (bench/ceiling.py), opened like the service's: its
    intra-op threads, spinning and reorder elision, and as many sessions at once as the service runs batches.
    Fed already-preprocessed patches of real photographs at a given batch."""

    def __init__(self, version: ModelVersion, settings: Settings) -> None:
        from service.model import RuntimeOptions

        self.runs_at_once = settings.inference_concurrency
        self.patches = patches(version, settings.max_batch_patches, sample_jpegs())
        runtime = RuntimeOptions.from_settings(settings)
        self.case = serving_case(version.metadata.precision, version, self.patches, elide=runtime.reorder_elision,
                                 threads=runtime.intra_op_threads, sessions=self.runs_at_once,
                                 config=runtime.session_config())
        self.input_name = next(iter(self.case.feeds))

    def measure(self, batch: int, seconds: float) -> dict[str, float]:
        """Calls of `batch` patches per session for about `seconds` (at least 3, after one untimed)."""
        self.case.feeds = {self.input_name: np.ascontiguousarray(self.patches[:batch])}
        self.case.run()
        times: list[float] = []
        end = time.perf_counter() + seconds
        while len(times) < 3 or time.perf_counter() < end:
            start = time.perf_counter()
            self.case.run()
            times.append(time.perf_counter() - start)
        ms = 1000 * statistics.median(times)
        return {"batch": batch, "sessions": self.runs_at_once, "runs": len(times), "ms_median": ms,
                "ms_p99": percentile([1000 * t for t in times], 99),
                "crops_per_s": 1000 * batch * self.runs_at_once / ms}


def ceiling_batch(row: dict[str, Any], crops: str) -> int:
    """The batch the service used at this level, to whole images: mean patches per run, rounded."""
    per = CROPS_PER_IMAGE[crops]
    mean = row.get("batching", {}).get("mean_batch_patches", math.nan)
    return per if math.isnan(mean) else max(per, per * round(mean / per))


# -- one run ----------------------------------------------------------------------------------------------
@dataclass
class Target:
    label: str  # "service fp32", "service fp32 v2", "service int8", "fp32 unbatched", "naive baseline"
    url: str
    ceiling: Ceiling | None = None  # measured beside each level of this target (services only)
    protocol: str = "predict"  # "v2": the Open Inference Protocol's infer (measured at TARGET_CONCURRENCY only)
    model: str | None = None


def sweep(targets: Sequence[Target], images: Path, plan: Plan, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every level, every target one after the other, each service level followed at once by its ceiling:
    load from other work drifts over minutes, and a ratio is only fair between numbers taken side by side."""
    rows = []
    for crops in plan.crops:
        for concurrency in plan.concurrency:
            for target in targets:
                if target.protocol == "v2" and (concurrency != TARGET_CONCURRENCY or crops != "ten"):
                    continue
                service = target.label != "naive baseline"
                before = scrape(target.url) if service else {}
                row = load_level(target.url, images, concurrency, crops, plan, target.protocol, target.model)
                row.update(target=target.label, load_average=report.load())
                if service:
                    row["batching"] = batching_stats(before, scrape(target.url))
                if target.ceiling is not None:
                    row["ceiling"] = target.ceiling.measure(ceiling_batch(row, crops), plan.ceiling_seconds)
                    row["ceiling"]["images_per_s"] = row["ceiling"]["crops_per_s"] / CROPS_PER_IMAGE[crops]
                    row["x_ceiling"] = _ratio(row["images_per_s"], row["ceiling"]["images_per_s"])
                rows.append(row)
                extra = f", ceiling {row['ceiling']['images_per_s']:.2f} (× {row['x_ceiling']:.2f})" \
                    if "ceiling" in row else ""
                log(f"  {target.label:>14} crops={crops:<6} c={concurrency:<3} {row['images_per_s']:7.2f} images/s"
                    f"{extra}  p99 {row['latency_ms']['p99']:7.0f} ms  errors {row['errors']}  "
                    f"(load {row['load_average']:.2f})")
    return rows


# -- the report -------------------------------------------------------------------------------------------
def _row(rows: list[dict], target: str, crops: str, concurrency: int) -> dict | None:
    return next((r for r in rows if r["target"] == target and r["crops"] == crops
                 and r["concurrency"] == concurrency), None)


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a and b and not math.isnan(a) and not math.isnan(b) else math.nan


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The ratios and the targets of issue 8, from this run's own numbers."""
    rows = result["runs"]
    out: dict[str, Any] = {"ratios": [], "targets": {}}
    for crops in result["plan"]["crops"]:
        for c in result["plan"]["concurrency"]:
            svc, base, int8 = (_row(rows, t, crops, c) for t in ("service fp32", "naive baseline", "service int8"))
            if svc is None:
                continue
            out["ratios"].append({
                "crops": crops, "concurrency": c, "service_images_per_s": svc["images_per_s"],
                "x_ceiling": svc.get("x_ceiling", math.nan),
                "x_baseline": _ratio(svc["images_per_s"], base["images_per_s"] if base else None),
                "int8_x_fp32": _ratio(int8["images_per_s"] if int8 else None, svc["images_per_s"]),
            })
    out["peers"] = peers.summary_rows(rows) if result.get("peers") else []
    t = out["targets"]
    target = next((r for r in out["ratios"] if r["crops"] == "ten" and r["concurrency"] == TARGET_CONCURRENCY), None)
    if target:
        svc16 = _row(rows, "service fp32", "ten", TARGET_CONCURRENCY)
        t["service_x_ceiling_c16_ten"] = {"value": target["x_ceiling"], "target": 0.9,
                                          "holds": target["x_ceiling"] >= 0.9}
        t["service_x_baseline_c16_ten"] = {"value": target["x_baseline"], "target": 1.6,
                                           "holds": target["x_baseline"] >= 1.6}
        t["zero_errors_c16_ten"] = {"value": svc16["errors"], "target": 0, "holds": svc16["errors"] == 0}
        if not math.isnan(target["int8_x_fp32"]):
            vnni = any("vnni" in f for f in result["environment"]["cpu_flags"])
            goal = 2.5 if vnni else 1.6
            t["int8_x_fp32_c16_ten"] = {"value": target["int8_x_fp32"], "target": goal,
                                        "holds": target["int8_x_fp32"] >= goal}
    v2 = _row(rows, "service fp32 v2", "ten", TARGET_CONCURRENCY)
    if target and v2:
        ratio = _ratio(v2["images_per_s"], target["service_images_per_s"])
        t["v2_x_predict_c16_ten"] = {"value": ratio, "target": 0.95, "holds": ratio >= 0.95}
    rollover = result.get("rollover")
    if rollover:
        t["rollover_p99_x_steady_p99"] = {"value": rollover["p99_ratio"], "target": 2.0,
                                          "holds": rollover["p99_ratio"] <= 2.0}
        t["rollover_errors"] = {"value": rollover["errors"], "target": 0, "holds": rollover["errors"] == 0}
    svc1 = _row(rows, "service fp32", "ten", 1)
    if svc1 and "ceiling" in svc1:  # at concurrency 1 the ceiling is the model's own time for one image
        model_ms = svc1["ceiling"]["ms_median"]
        ratio = svc1["latency_ms"]["p99"] / model_ms
        # The model's own runs have a tail too (other processes, interrupts): its p99 says how much of the
        # service's p99 is the service's doing.
        model_p99 = svc1["ceiling"].get("ms_p99", math.nan)
        t["p99_c1_x_model_one_image"] = {"value": ratio, "target": 1.3, "holds": ratio <= 1.3,
                                         "p99_ms": svc1["latency_ms"]["p99"], "model_ms": model_ms,
                                         "model_p99_ms": model_p99,
                                         "p99_x_model_p99": svc1["latency_ms"]["p99"] / model_p99}
    return out


def print_report(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    env = result["environment"]
    out(f"CPU: {env['cpu']} ({env['cpus']} CPUs, {env['cpu_isa']}); flags: {' '.join(env['cpu_flags'])}")
    out(f"onnxruntime {env['onnxruntime']}; model {result['models']['fp32']}"
        + (f", int8 {result['models']['int8']}" if result["models"].get("int8") else ""))
    if result["service_env"]:
        out("service settings: " + " ".join(f"{k}={v}" for k, v in result["service_env"].items()))
    roof = result.get("roof")
    if roof:
        out(f"roof: fp32 4096² matmul {roof['gflops']:.0f} GFLOP/s → {roof['images_per_s']:.2f} ten-crop images/s "
            "for the paper network")
    out(f"load average: {env['load_average'][0]:.2f} at start, {result['load_average_end']:.2f} at end")
    ratios = {(r["crops"], r["concurrency"]): r for r in result["summary"]["ratios"]}
    table_rows = []
    for r in result["runs"]:
        lat = r["latency_ms"]
        ratio = ratios.get((r["crops"], r["concurrency"]), {}) if r["target"] == "service fp32" else {}
        if "service_x_peer" in r:
            ratio = {"x_baseline": f"svc ÷ {r['service_x_peer']:.2f}"}
        ceiling = r.get("ceiling", {})
        table_rows.append([
            r["target"], r["crops"], r["concurrency"], r["images_per_s"], lat["p50"], lat["p95"], lat["p99"],
            r["errors"], r.get("batching", {}).get("mean_batch_patches", ""), ceiling.get("images_per_s", ""),
            r.get("x_ceiling", ""), ratio.get("x_baseline", ""), ratio.get("int8_x_fp32", ""),
            f"{r['load_average']:.1f}"])
    out("")
    out(report.table(table_rows, ["target", "crops", "conc", "images/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                                  "batch", "ceiling", "÷ ceiling", "÷ baseline", "int8 ÷ fp32", "load"]))
    peers.print_summary(result, out)
    rollover = result.get("rollover")
    if rollover:
        out("")
        out(f"rollover (concurrency 16, ten crops, a new version published under load): steady p99 "
            f"{rollover['steady_p99_ms']:.0f} ms over {rollover['steady_requests']} requests; during the switch "
            f"({rollover['switch_window_s']:.1f} s, {rollover['switch_requests']} requests) p99 "
            f"{rollover['switch_p99_ms']:.0f} ms, max {rollover['switch_max_ms']:.0f} ms; errors {rollover['errors']} "
            f"of {rollover['requests']}; v2 loaded in {rollover['load_seconds']:.1f} s, first answered "
            f"{rollover['first_v2_sent_after_s'] or float('nan'):.1f} s after publication; answered by v1 after the "
            f"switch: {rollover['answered_by_v1_after_switch']}")
    targets = result["summary"]["targets"]
    if targets:
        out("")
        out("targets (issues 8 and 12):")
        for name, t in targets.items():
            out(f"  {name:28} {t['value']:.3f} (target {t['target']}) {'holds' if t['holds'] else 'MISSED'}")
        latency = targets.get("p99_c1_x_model_one_image")
        if latency:
            out(f"  (concurrency 1: service p99 {latency['p99_ms']:.1f} ms; the model's own runs: median "
                f"{latency['model_ms']:.1f} ms, p99 {latency['model_p99_ms']:.1f} ms; service p99 ÷ model p99 "
                f"{latency['p99_x_model_p99']:.2f})")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for target in dict.fromkeys(r["target"] for r in result["runs"]):
        for crops in result["plan"]["crops"]:
            rows = sorted((r for r in result["runs"] if r["target"] == target and r["crops"] == crops),
                          key=lambda r: r["concurrency"])
            if not rows:
                continue
            xs = [r["concurrency"] for r in rows]
            style = "-" if crops == "ten" else "--"
            line, = ax1.plot(xs, [r["images_per_s"] for r in rows], style, marker="o", label=f"{target}, {crops}")
            ax2.plot(xs, [r["latency_ms"]["p99"] for r in rows], style, marker="o", label=f"{target}, {crops}")
            if "ceiling" in rows[0]:
                ax1.plot(xs, [r["ceiling"]["images_per_s"] for r in rows], ":", color=line.get_color(),
                         label=f"ceiling of {target}, {crops}")
    for ax, title, unit in ((ax1, "throughput", "images/s"), (ax2, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["plan"]["concurrency"], [str(c) for c in result["plan"]["concurrency"]])
        ax.set_xlabel("concurrency (clients)")
        ax.set_ylabel(unit)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(f"alexnet-bench — {result['environment']['cpu']} ({result['environment']['cpus']} CPUs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the command ------------------------------------------------------------------------------------------
def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from exc
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return levels


def _crops(text: str) -> list[str]:
    crops = [x.strip() for x in text.split(",") if x.strip()]
    if not crops or set(crops) - set(CROPS_PER_IMAGE):
        raise argparse.ArgumentTypeError(f"crops must be ten and/or center, got {text!r}")
    return crops


def _peers(text: str) -> list[str]:
    try:
        return peers.parse_peers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("ALEXNET_"):
        raise argparse.ArgumentTypeError(f"expected ALEXNET_NAME=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark the service (real uvicorn, driven over loopback by a separate load generator) "
                    "against its ceiling (a bare ONNX Runtime session on preprocessed crops) and the naive "
                    "baseline (FastAPI + eager PyTorch + TenCrop), in one run. See docs/benchmark.md.",
        epilog="examples:\n  alexnet-bench --quick\n  alexnet-bench --int8 --plot bench.png\n"
               "  alexnet-bench --model-store model_store --model-name alexnet --int8")
    m = p.add_argument_group("model")
    m.add_argument("--model-store", type=Path,
                   help="benchmark a model from this store (default: export a random-init paper network with "
                        "1000 classes into a temporary store)")
    m.add_argument("--model-name", help="model in --model-store (default: the only one)")
    m.add_argument("--model-version", type=int, help="fp32 version (default: the newest)")
    m.add_argument("--int8", action="store_true",
                   help="also serve the int8 version (newest of the same name in --model-store, else quantised "
                        "here) and report int8 ÷ fp32")
    m.add_argument("--int8-version", type=int, help="the int8 version to serve (implies --int8)")
    d = p.add_argument_group("load")
    d.add_argument("--concurrency", type=_levels, default=[1, 4, 16, 64],
                   help="concurrent clients, comma-separated (default: 1,4,16,64)")
    d.add_argument("--crops", type=_crops, default=["ten", "center"], help="ten and/or center (default: both)")
    d.add_argument("--duration", type=float, default=15.0, help="seconds measured per level, at most (default: 15)")
    d.add_argument("--max-requests", type=int, default=600, help="answers measured per level, at most (default: 600)")
    d.add_argument("--images", type=Path,
                   help="folder of images to send (default: ../shared/data/imagenet-samples when present, "
                        "else JPEGs generated here)")
    d.add_argument("--quick", action="store_true",
                   help="smoke run: concurrency 1 and 16, 5 s per level, 1 s of ceiling")
    s = p.add_argument_group("what to measure")
    s.add_argument("--service-env", type=_env, action="append", default=[], metavar="ALEXNET_NAME=VALUE",
                   help="a service setting for this run (repeatable), e.g. ALEXNET_MAX_BATCH_PATCHES=40")
    s.add_argument("--batching-off-too", action="store_true",
                   help="also measure the fp32 service with ALEXNET_BATCHING=false (one run per request)")
    s.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    s.add_argument("--peers", nargs="?", const=",".join(peers.PEERS), type=_peers, metavar="litserve,torchserve",
                   help="also serve the same model with LitServe and TorchServe, one at a time, at every level and "
                        "crops mode, and report service ÷ peer (needs the peers extra and, for TorchServe, Java; "
                        "default with no value: both)")
    s.add_argument("--peer-batch-delay-ms", type=float,
                   help="the peers' batch delay (default: the service's ALEXNET_MAX_BATCH_DELAY_MS, at least "
                        f"{peers.MIN_BATCH_DELAY_MS:g} ms)")
    s.add_argument("--no-ceiling", action="store_true", help="skip the ceiling and the roof")
    s.add_argument("--no-rollover", action="store_true", help="skip the rollover measurement")
    s.add_argument("--rollover-seconds", type=float, default=40.0,
                   help="closed-loop load at concurrency 16 during which a new version is published after a "
                        "third of the time (default: 40)")
    s.add_argument("--ceiling-seconds", type=float, default=5.0,
                   help="seconds of bare-session runs after each service level (default: 5)")
    o = p.add_argument_group("output")
    o.add_argument("--json", type=Path, help="where to write the JSON (default: bench/results/benchmark-<time>.json)")
    o.add_argument("--plot", type=Path, metavar="PNG", help="also draw throughput and p99 against concurrency")
    return p


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    plan = Plan(concurrency=args.concurrency, crops=args.crops, duration=args.duration,
                max_requests=args.max_requests, ceiling_seconds=args.ceiling_seconds)
    if args.quick:
        plan = Plan(concurrency=[c for c in args.concurrency if c in (1, 16)] or [1], crops=args.crops,
                    duration=5.0, max_requests=60, ceiling_seconds=1.0)
    service_env = dict(args.service_env)
    # What the service will run with: its defaults, ALEXNET_* from this environment, then --service-env.
    try:
        settings = Settings(**{k.removeprefix("ALEXNET_").lower(): v for k, v in service_env.items()})
    except ValueError as exc:  # pydantic's ValidationError
        raise RuntimeError(f"--service-env: {exc}") from exc
    for name in args.peers or []:
        why = peers.missing(name)
        if why:
            raise RuntimeError(f"--peers {name}: {why}")
    result: dict[str, Any] = {"environment": report.environment(), "plan": vars(plan), "service_env": service_env,
                              "runs": []}
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-") as tmp, contextlib.ExitStack() as servers:
        workdir = Path(tmp)
        with contextlib.redirect_stdout(sys.stderr):  # the exporter's progress lines are not the report
            models = resolve_models(args, workdir, log)
        images = image_folder(args.images, workdir)
        result["models"] = {"fp32": str(models.fp32.path), "int8": str(models.int8.path) if models.int8 else None}
        result["images"] = str(images)
        services = [("service fp32", models.fp32, service_env)]
        if models.int8 is not None:
            services.append(("service int8", models.int8, service_env))
        if args.batching_off_too:
            services.append(("fp32 unbatched", models.fp32, {**service_env, "ALEXNET_BATCHING": "false"}))
        targets, pids = [], []  # pids: the servers' process groups, paused while a peer is measured
        for label, version, env in services:
            log(f"{label}: starting alexnet-serve on {version.path} ...")
            endpoint = servers.enter_context(service_server(version, workdir, env, label))
            url = endpoint.url
            pids.append(endpoint.pid)
            ceiling = None
            if not args.no_ceiling and label != "fp32 unbatched":
                ceiling = Ceiling(version, settings)
            targets.append(Target(label, url, ceiling))
            if label == "service fp32" and TARGET_CONCURRENCY in plan.concurrency and "ten" in plan.crops:
                targets.append(Target("service fp32 v2", url, protocol="v2", model=version.name))
        if not args.no_baseline:
            log("naive baseline: starting uvicorn bench.naive_baseline:app ...")
            baseline = servers.enter_context(baseline_server(workdir))
            pids.append(baseline.pid)
            targets.append(Target("naive baseline", baseline.url))
        result["runs"] = sweep(targets, images, plan, log)
        if args.peers:
            result["peers"], rows = peers.measure(args.peers, models.fp32, settings, targets[0].url, images, plan,
                                                  workdir, log, args.peer_batch_delay_ms, service_pids=pids)
            result["runs"] += rows
        servers.close()  # the rollover measurement has the machine to itself
        if not args.no_rollover:
            result["rollover"] = measure_rollover(models.fp32, workdir, images, service_env, args.rollover_seconds,
                                                  log, service_server, loadgen_command)
    if not args.no_ceiling:
        from bench.roof import measure_roof

        roof = measure_roof(rounds=3, intra_op_threads=settings.effective_intra_op_threads())
        result["roof"] = {"gflops": roof.gflops, "images_per_s": roof.images_per_s}
    result["load_average_end"] = report.load()
    result["summary"] = summarise(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.int8 = args.int8 or bool(args.int8_version)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        result = run(args, log)
    except (StoreError, RuntimeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print_report(result)
    path = report.write_json(result, args.json, "benchmark")
    print(f"\nJSON: {path}")
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
