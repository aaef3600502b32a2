"""Where each server's time goes under load: py-spy samples of the service and of its peers, bucketed by step.

    python -m bench.spy --model-store STORE --servers service,litserve,torchserve --concurrency 16 --seconds 15
    python -m bench.spy --summarise spy-litserve.txt        # an earlier recording (py-spy's raw format) again

issue 23 asks, where a target against LitServe or TorchServe is missed, for the profile that says why. The
benchmark's ratios say how much; this says where: each server is started alone (as in `alexnet-bench --peers`,
with the same fairness rules: bench/peers.py), warmed, then driven by bench/loadgen.py at one concurrency level
while ``py-spy record --subprocesses`` samples every Python thread of its process group (its workers included).
Each sample's stack is put in one bucket (the first that matches, in this order):

- **inference**: a frame of onnxruntime (``InferenceSession.run``), or of torch below no preprocessing frame;
- **decode + crops**: Pillow, torchvision's transforms, the service's service/preprocess.py, the peers' own crops;
- **everything else**: HTTP parsing, the framework, queues, averaging, JSON.

py-spy counts a thread only while it runs (idle threads are not sampled), so samples ÷ rate ÷ images answered is
the **core-milliseconds per image** a step costs in Python threads. ONNX Runtime's and PyTorch's own intra-op
threads are native, not Python: a run's time is counted once, on the thread that called it, so the inference
figure is the run's wall time, not its core time. Needs py-spy (``pip install py-spy``; root or ptrace rights).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.peers import PEERS

BUCKETS = ("inference", "decode + crops", "everything else")
SERVERS = ("service", *PEERS)
_PREPROCESS = re.compile(r"\((?:PIL/|torchvision/transforms/|service/preprocess\.py)|"
                         r"^(?:ten_crops|decode_request|preprocess) \((?:bench/peer_litserve\.py|"
                         r"bench/peer_torchserve_handler\.py)")


def bucket(stack: Sequence[str]) -> str:
    """The step one sampled stack (its frames as py-spy writes them, ``function (file:line)``) belongs to."""
    if any("(onnxruntime/" in f for f in stack):
        return "inference"
    if any(_PREPROCESS.search(f) for f in stack):
        return "decode + crops"
    if any("(torch/" in f for f in stack):
        return "inference"
    return "everything else"


def summarise(raw: str) -> Counter[str]:
    """py-spy's raw (collapsed) output — one ``frame;frame;... count`` line per distinct stack — as samples per
    bucket. The ``process PID:"cmdline"`` frames that --subprocesses adds are not code and are dropped."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        stack = [f for f in stack_text.split(";") if not f.startswith("process ")]
        counts[bucket(stack)] += int(count)
    return counts


def per_image_ms(counts: Counter[str], rate: int, images: float) -> dict[str, float]:
    """Core-milliseconds per image in each bucket (samples ÷ rate ÷ the images answered while sampled)."""
    return {b: (1000 * counts[b] / rate / images if images else float("nan")) for b in BUCKETS}


def record(pid: int, seconds: float, rate: int, out: Path) -> subprocess.Popen:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "-o",
                             str(out), "-r", str(rate), "-d", str(int(seconds)), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def started(name: str, version, settings, workdir: Path, crops: str) -> Iterator[Any]:
    """The service (alexnet-serve on `version` alone) or a peer, as `alexnet-bench --peers` starts them."""
    from bench import peers
    from bench.benchmark import service_server

    if name == "service":
        with service_server(version, workdir, {}, "spy-service") as endpoint:
            yield endpoint
        return
    config = peers.PeerConfig.from_settings(settings, crops)
    scripted = peers.script_network(version, workdir) if name == "torchserve" else None
    with peers.peer_server(name, version, config, workdir, scripted) as endpoint:
        yield endpoint


def profile(name: str, version, settings, images: Path, concurrency: int, crops: str, seconds: float, rate: int,
            workdir: Path, log=print) -> dict[str, Any]:
    from bench.benchmark import loadgen_command

    protocol = "predict" if name == "service" else name
    with started(name, version, settings, workdir, crops) as endpoint:
        warm = loadgen_command(endpoint.url, images, concurrency, crops, 5, 10 ** 6, protocol)
        subprocess.run(warm, capture_output=True, text=True, timeout=600, check=True)
        out = workdir / f"spy-{name}.txt"
        load = subprocess.Popen(loadgen_command(endpoint.url, images, concurrency, crops, seconds + 6, 10 ** 6,
                                                protocol), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # the load generator started and the server saturated before sampling begins
        spy = record(endpoint.pid, seconds, rate, out)
        _, err = spy.communicate(timeout=seconds + 60)
        stdout, stderr = load.communicate(timeout=seconds + 600)
        if load.returncode != 0:
            raise RuntimeError(f"load generator failed on {name}:\n{stderr[-2000:]}")
        if spy.returncode != 0 or not out.is_file():
            raise RuntimeError(f"py-spy failed on {name} ({spy.returncode}): {err[-1000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    counts = summarise(out.read_text())
    answered = summary["images_per_s"] * seconds  # the server is saturated for the whole sampled window
    row = {"server": name, "crops": crops, "concurrency": concurrency, "images_per_s": summary["images_per_s"],
           "images": answered, "errors": summary["errors"], "samples": dict(counts), "rate": rate,
           "core_ms_per_image": per_image_ms(counts, rate, answered), "raw": str(out)}
    log(f"{name:>10}: {row['images_per_s']:6.2f} images/s; core-ms per image: "
        + ", ".join(f"{b} {v:6.1f}" for b, v in row["core_ms_per_image"].items()))
    return row


def table(rows: Sequence[dict[str, Any]]) -> str:
    from bench import report

    return report.table([[r["server"], r["crops"], r["concurrency"], r["images_per_s"],
                          *(r["core_ms_per_image"][b] for b in BUCKETS)] for r in rows],
                        ["server", "crops", "conc", "images/s", *(f"{b} ms/img" for b in BUCKETS)])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spy", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-store", type=Path, help="fp32 model to serve (default: the benchmark's random-init "
                                                    "paper network, exported here)")
    p.add_argument("--model-name", help="model in --model-store (default: the only one)")
    p.add_argument("--servers", default="service,litserve", help=f"comma-separated: {', '.join(SERVERS)}")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--crops", choices=("ten", "center"), default="ten")
    p.add_argument("--seconds", type=float, default=15, help="sampled load window per server")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--images", type=Path, help="folder of images to send (default: the benchmark's)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--summarise", type=Path, help="only bucket this py-spy raw file and print samples per bucket")
    args = p.parse_args(argv)
    if args.summarise:
        counts = summarise(args.summarise.read_text())
        total = sum(counts.values()) or 1
        for b in BUCKETS:
            print(f"{b:>16}: {counts[b]:7d} samples ({100 * counts[b] / total:5.1f} %)")
        return 0
    from bench.benchmark import image_folder, resolve_models
    from service.settings import Settings

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    bad = [n for n in names if n not in SERVERS]
    if bad:
        p.error(f"--servers: unknown {', '.join(bad)} ({', '.join(SERVERS)})")
    workdir = Path(tempfile.mkdtemp(prefix="alexnet-spy-"))
    models = resolve_models(argparse.Namespace(model_store=args.model_store, model_name=args.model_name,
                                               model_version=None, int8=False, int8_version=None), workdir, print)
    images = image_folder(args.images, workdir)
    rows = [profile(n, models.fp32, Settings(), images, args.concurrency, args.crops, args.seconds, args.rate,
                    workdir) for n in names]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
