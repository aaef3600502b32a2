"""What tracing and shadowing cost in throughput: the service at concurrency 16 with each on and off.

    python -m bench.operability                          # random-init paper network, 1000 classes, ten crops
    python -m bench.operability --model-store model_store --model-name alexnet --duration 20 --rounds 3

Four `alexnet-serve` processes (real uvicorn) on the same store, each serving the benchmarked version as v1 and an
exact copy as v2 (so every one holds the same two sessions), differing in one thing:

- ``baseline``: tracing off, no shadow;
- ``tracing``: ``ALEXNET_TRACING=true`` at sample ratio 1 (every request traced: the most it can cost), spans sent
  over OTLP/HTTP to a sink in this process that reads and acknowledges them (a collector's cheapest work);
- ``shadow 10 %`` and ``shadow 100 %``: ``ALEXNET_SHADOW=NAME=2:10`` / ``2:100``: that share of the requests is also
  run on v2 (decode, batch, model run, compare), after the client has its answer.

The load generator (bench/loadgen.py, a separate process) drives each in turn at concurrency 16 for `duration`
seconds, rotating the order every round (load drifts over minutes on a shared machine); the ratio of each to the
baseline is the median over rounds of the per-round ratios. The shadow servers' /metrics say how many copies ran
and how many were shed (under this load some are: shadow work gives way first). Prints a table and writes JSON
(default bench/results/operability-<time>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import re
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alexnet_store import ModelStore
from bench import report
from bench.benchmark import Plan, image_folder, load_level, service_server

PROG = "python -m bench.operability"
CONCURRENCY = 16


class Sink:
    """An OTLP/HTTP endpoint that reads every export and answers 200 (what it is sent is counted, not kept)."""

    def __init__(self) -> None:
        stats = {"exports": 0, "bytes": 0}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                self.rfile.read(n)
                stats["exports"] += 1
                stats["bytes"] += n
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.stats = stats
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


_SHADOW = re.compile(r'^alexnet_shadow_requests_total\{[^}]*outcome="(\w+)"[^}]*\}\s+(\S+)$', re.M)


def shadow_counts(url: str) -> dict[str, float]:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for outcome, value in _SHADOW.findall(text):
        out[outcome] = out.get(outcome, 0.0) + float(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model-store", type=Path, help="benchmark a model from this store (default: export a "
                                                    "random-init paper network with 1000 classes)")
    p.add_argument("--model-name", help="model in --model-store (default: the only one)")
    p.add_argument("--model-version", type=int, help="its version (default: the newest)")
    p.add_argument("--images", type=Path, help="folder of images (default: ../shared/data/imagenet-samples when "
                                               "present, else JPEGs generated here)")
    p.add_argument("--crops", choices=["ten", "center"], default="ten")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY)
    p.add_argument("--duration", type=float, default=15.0, help="seconds measured per server and round")
    p.add_argument("--max-requests", type=int, default=100000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path, help="where to write the JSON")
    return p


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"environment": report.environment(), "args": {k: str(v) for k, v in vars(args).items()}}
    sink = Sink()
    with tempfile.TemporaryDirectory(prefix="alexnet-operability-") as tmp, contextlib.ExitStack() as servers:
        workdir = Path(tmp)
        if args.model_store is None:
            from bench.references import build_models

            log("exporting a random-init paper network (1000 classes) ...")
            with contextlib.redirect_stdout(sys.stderr):
                source = build_models(workdir, num_classes=1000, int8=False, log=log)["fp32"]
        else:
            store = ModelStore(args.model_store)
            name = store.resolve(args.model_name).name
            source = store.resolve(name, args.model_version) if args.model_version else store.resolve(name)
        store = ModelStore(workdir / "bench-store")  # v1 and its copy v2 (the shadow's version)
        v1 = store.publish_copy(source)
        store.publish_copy(v1)
        name = v1.name
        images = image_folder(args.images, workdir)
        result["model"] = str(source.path)
        configs = {
            "baseline": {},
            "tracing": {"ALEXNET_TRACING": "true", "ALEXNET_TRACING_SAMPLE_RATIO": "1",
                        "ALEXNET_TRACING_ENDPOINT": sink.url},
            "shadow 10 %": {"ALEXNET_SHADOW": f"{name}=2:10"},
            "shadow 100 %": {"ALEXNET_SHADOW": f"{name}=2:100"},
        }
        urls = {}
        for label, env in configs.items():
            log(f"{label}: starting alexnet-serve ...")
            base = {"ALEXNET_TRAFFIC": f"{name}=1:1", "ALEXNET_REPOSITORY_POLL_SECONDS": "0"}
            urls[label] = servers.enter_context(service_server(v1, workdir, {**base, **env}, label, policy="all")).url
        plan = Plan(concurrency=[args.concurrency], crops=[args.crops], duration=args.duration,
                    max_requests=args.max_requests, ceiling_seconds=0)
        rows: dict[str, list[dict[str, Any]]] = {label: [] for label in configs}
        labels = list(configs)
        for r in range(args.rounds):
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                before = shadow_counts(urls[label])
                row = load_level(urls[label], images, args.concurrency, args.crops, plan)
                after = shadow_counts(urls[label])
                row["shadow"] = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
                row["load_average"] = report.load()
                rows[label].append(row)
                log(f"  round {r + 1} {label:>13}: {row['images_per_s']:7.2f} images/s, p99 "
                    f"{row['latency_ms']['p99']:6.0f} ms, errors {row['errors']}"
                    + (f", shadow copies {row['shadow']}" if row["shadow"] else "")
                    + f" (load {row['load_average']:.2f})")
    sink.close()
    base = [row["images_per_s"] for row in rows["baseline"]]
    result["runs"] = rows
    result["summary"] = {label: {
        "images_per_s": statistics.median(row["images_per_s"] for row in rows[label]),
        "p99_ms": statistics.median(row["latency_ms"]["p99"] for row in rows[label]),
        "errors": sum(row["errors"] for row in rows[label]),
        "x_baseline": report.paired_ratio([row["images_per_s"] for row in rows[label]], base),
        "shadow": {k: sum(row["shadow"].get(k, 0.0) for row in rows[label])
                   for k in sorted({k for row in rows[label] for k in row["shadow"]})},
    } for label in rows}
    result["sink"] = dict(sink.stats)
    return result


def print_report(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    env = result["environment"]
    out(f"CPU: {env['cpu']} ({env['cpus']} CPUs); load average at start {env['load_average'][0]:.2f}")
    out(f"model {result['model']}; concurrency {result['args']['concurrency']}, crops={result['args']['crops']}, "
        f"{result['args']['rounds']} rounds of {result['args']['duration']} s per server")
    rows = [[label, s["images_per_s"], s["x_baseline"], s["p99_ms"], s["errors"],
             " ".join(f"{k}={v:.0f}" for k, v in s["shadow"].items()) or "-"]
            for label, s in result["summary"].items()]
    out(report.table(rows, ["server", "images/s", "÷ baseline", "p99 ms", "errors", "shadow copies"]))
    out(f"trace sink: {result['sink']['exports']} OTLP/HTTP exports, {result['sink']['bytes'] / 1e6:.1f} MB")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = run(args, log)
    print_report(result)
    print(f"\nJSON: {report.write_json(result, args.json, 'operability')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
