"""Memory under a burst and over a long run: ``python -m bench.stress burst|soak|throughput``.

    python -m bench.stress burst                  # 64 clients × 8 photos of 12 megapixels for 60 s, then 60 s idle
    python -m bench.stress soak --minutes 10      # 64 clients, 10 % bad uploads, 5 % over the size limit
    python -m bench.stress throughput             # concurrency 16, admission control on vs off, side by side

Each starts a real `alexnet-serve` (the random-init paper network with 1,000 classes, exported into a temporary
store, unless ``--model-store``) and samples its resident memory (/proc/PID/statm) four times a second while
clients drive it from this process. The clients speak plain HTTP/1.1 with ``Expect: 100-continue``, as curl does
for large uploads: the service may answer 503 (admission control) before the client sends a body it would not
read, which an HTTP library that always sends the whole body first (httpx, requests) turns into a broken pipe.

burst (issue #13's targets: peak RSS ≤ idle + 1.5 GB, no 5xx, every answer 200 or 503 with Retry-After, ready
throughout, RSS back within idle + 300 MB 60 s after): reports idle, peak and after RSS, the answers by status,
the readiness probe's answers, and whether each target holds.

soak (targets: no 5xx, RSS slope ≤ 1 MB/min over the last 5 minutes): reports the answers by status, p50/p99 of
the good requests per minute, the RSS slope (least squares) over the last 5 minutes, and the RSS after 30 s idle
(``--after``): what the load's working set held goes back then, what leaked stays.

throughput (target: ≥ 0.97 × without admission control): alexnet-bench's load generator at concurrency 16 with
ten crops, alternately against a service with default admission limits and one with none, four rounds.

``--service-env ALEXNET_NAME=VALUE`` passes settings; ``--allocator`` runs the service with glibc's defaults,
``MALLOC_ARENA_MAX=2`` or jemalloc (LD_PRELOAD; Debian's libjemalloc2), to compare how memory goes back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import report
from bench.benchmark import Endpoint, _env, loadgen_command, resolve_models, service_server
from bench.loadgen import percentile
from service.repository import rss_bytes

PROG = "python -m bench.stress"
MB = 1024 * 1024
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
ALLOCATORS = {"glibc": {}, "arena2": {"MALLOC_ARENA_MAX": "2"}, "jemalloc": {"LD_PRELOAD": JEMALLOC}}


# -- inputs -------------------------------------------------------------------------------------------------------
def photos(count: int, megapixels: float, seed: int = 0) -> list[bytes]:
    """JPEGs (quality 90) of `megapixels` cut from scikit-learn's two photographs, each a different region/flip."""
    from PIL import Image, ImageOps
    from sklearn.datasets import load_sample_images

    sources = [Image.fromarray(a) for a in load_sample_images().images]
    rng = random.Random(seed)
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(width * 3 / 4)
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        w, h = int(src.width * rng.uniform(0.6, 1.0)), int(src.height * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, src.width - w), rng.randint(0, src.height - h)
        img = src.crop((left, top, left + w, top + h)).resize((width, height), Image.Resampling.BICUBIC)
        if i % 2:
            img = ImageOps.mirror(img)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def multipart(files: Sequence[tuple[str, bytes]], boundary: str = "stress-7f1e9c") -> tuple[bytes, str]:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# -- the service's memory and readiness, sampled in threads ----------------------------------------------------------
class Sampler(threading.Thread):
    """Calls `probe` every `interval` seconds and keeps (time, value) until stopped."""

    def __init__(self, probe: Callable[[], Any], interval: float) -> None:
        super().__init__(daemon=True)
        self.probe, self.interval = probe, interval
        self.samples: list[tuple[float, Any]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.monotonic(), self.probe()))
            self.stopped.wait(self.interval)

    def between(self, start: float, end: float) -> list[Any]:
        return [v for t, v in self.samples if start <= t <= end and v is not None]


def ready_probe(url: str) -> Callable[[], int | str]:
    import httpx

    def probe() -> int | str:
        try:
            return httpx.get(f"{url}/health/ready", timeout=5).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    return probe


# -- a minimal HTTP/1.1 client that waits for 100 Continue ------------------------------------------------------------
@dataclass
class Answer:
    kind: str
    sent: float
    done: float
    status: int | str  # HTTP status, or the name of a transport error
    retry_after: str | None = None


async def post(url: str, path: str, body: bytes, content_type: str, timeout: float = 300.0) -> tuple[int, dict]:
    """POST with ``Expect: 100-continue``: the body is sent only after the server's 100 Continue, so an early final
    answer (503, 413) arrives without the body having been pushed at a server that will not read it."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), timeout)
    try:
        head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        writer.write(head.encode())
        await writer.drain()
        status, headers = await asyncio.wait_for(_read_head(reader), timeout)
        if status == 100:
            writer.write(body)
            await writer.drain()
            status, headers = await asyncio.wait_for(_read_head(reader), timeout)
        length = int(headers.get("content-length", "0"))
        if length:
            await asyncio.wait_for(reader.readexactly(length), timeout)
        return status, headers
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection without an answer")
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers


async def closed_loop(url: str, clients: int, seconds: float, pick: Callable[[random.Random], tuple[str, bytes, str]],
                      answers: list[Answer], honour_retry_after: bool = True) -> None:
    """`clients` clients, each sending the next request as soon as its answer arrives (after Retry-After on 503)."""
    end = time.monotonic() + seconds

    async def client(n: int) -> None:
        rng = random.Random(n)
        while time.monotonic() < end:
            kind, body, content_type = pick(rng)
            sent = time.monotonic()
            retry = None
            try:
                status, headers = await post(url, "/predict", body, content_type)
                retry = headers.get("retry-after")
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status = type(exc).__name__
            answers.append(Answer(kind, sent, time.monotonic(), status, retry))
            if status == 503 and honour_retry_after:
                await asyncio.sleep(min(float(retry or 1), 5.0) * rng.uniform(0.5, 1.0))

    await asyncio.gather(*(client(n) for n in range(clients)))


# -- the commands -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def service(args: argparse.Namespace, workdir: Path, log: Callable[[str], None], env: dict[str, str] | None = None,
            label: str = "service") -> Iterator[Endpoint]:
    models = resolve_models(args, workdir, log)
    settings = {**dict(args.service_env), **(env or {}), **ALLOCATORS[args.allocator]}
    log(f"{label}: alexnet-serve on {models.fp32.path} ({args.allocator}; "
        f"{' '.join(f'{k}={v}' for k, v in settings.items()) or 'default settings'}) ...")
    with service_server(models.fp32, workdir, settings, label) as endpoint:
        yield endpoint


def idle_rss(pid: int, seconds: float = 5.0) -> int:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(rss_bytes(pid) or 0)
        time.sleep(0.25)
    return int(statistics.median(samples))


def burst(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"making {args.distinct} JPEGs of {args.megapixels:g} megapixels ...")
    images = photos(args.distinct, args.megapixels)
    bodies = []
    for i in range(args.distinct):
        files = [(f"photo_{(i + j) % args.distinct}.jpg", images[(i + j) % args.distinct]) for j in range(args.files)]
        bodies.append(multipart(files))
    with service(args, workdir, log) as endpoint:
        idle = idle_rss(endpoint.pid)
        memory = Sampler(lambda: rss_bytes(endpoint.pid), 0.25)
        ready = Sampler(ready_probe(endpoint.url), 0.5)
        memory.start()
        ready.start()
        answers: list[Answer] = []
        log(f"burst: {args.clients} clients × {args.files} photos ({len(bodies[0][0]) / MB:.1f} MB a request) for "
            f"{args.seconds:g} s; idle RSS {idle / MB:.0f} MB ...")
        start = time.monotonic()
        asyncio.run(closed_loop(endpoint.url, args.clients, args.seconds,
                                lambda rng: ("burst", *rng.choice(bodies)), answers))
        burst_end = time.monotonic()
        log(f"  {len(answers)} answers; idle for {args.after:g} s ...")
        time.sleep(args.after)
        ready.stopped.set()
        memory.stopped.set()
        after = idle_rss(endpoint.pid, 3.0)
    peak = max(memory.between(start, burst_end + args.after), default=0)
    statuses = Counter(str(a.status) for a in answers)
    probes = Counter(str(s) for s in ready.between(start, burst_end))
    server_errors = sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500 and s != "503")
    no_retry_after = sum(1 for a in answers if a.status == 503 and not a.retry_after)
    other = sum(n for s, n in statuses.items() if s not in ("200", "503"))
    done = [a for a in answers if a.status == 200]
    result = {
        "clients": args.clients, "files_per_request": args.files, "megapixels": args.megapixels,
        "request_mb": len(bodies[0][0]) / MB, "seconds": args.seconds, "allocator": args.allocator,
        "service_env": dict(args.service_env), "answers": len(answers), "statuses": dict(statuses),
        "images_per_s": args.files * len(done) / (burst_end - start),
        "latency_ms_200": {"p50": percentile([1000 * (a.done - a.sent) for a in done], 50),
                           "p99": percentile([1000 * (a.done - a.sent) for a in done], 99)},
        "ready_probes": dict(probes), "idle_rss_mb": idle / MB, "peak_rss_mb": peak / MB,
        "after_rss_mb": after / MB, "peak_over_idle_mb": (peak - idle) / MB, "after_over_idle_mb": (after - idle) / MB,
    }
    result["targets"] = {
        "peak_rss_le_idle_plus_1500mb": (peak - idle) / MB <= 1500,
        "no_5xx_but_503": server_errors == 0,
        "every_answer_200_or_503_with_retry_after": other == 0 and no_retry_after == 0,
        "ready_throughout": set(probes) == {"200"},
        "rss_back_within_idle_plus_300mb_after": (after - idle) / MB <= 300,
    }
    return result


def soak(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    good = [multipart([(f"p{i}.jpg", img)]) for i, img in enumerate(photos(8, 0.19, seed=1))]  # 500×375
    broken = [multipart([("notes.txt", b"not an image\n" * 100)]), multipart([("cut.jpg", good[0][0][200:3000])])]
    limit = dict(args.service_env).get("ALEXNET_MAX_FILE_BYTES")
    too_big = multipart([("huge.jpg", b"\xff\xd8\xff" + bytes(int(limit or 20 * MB) + 1))])

    def pick(rng: random.Random) -> tuple[str, bytes, str]:
        x = rng.random()
        if x < args.bad:
            return ("bad", *rng.choice(broken))
        if x < args.bad + args.oversize:
            return ("oversize", *too_big)
        return ("good", *rng.choice(good))

    with service(args, workdir, log) as endpoint:
        idle = idle_rss(endpoint.pid)
        memory = Sampler(lambda: rss_bytes(endpoint.pid), 1.0)
        memory.start()
        answers: list[Answer] = []
        log(f"soak: {args.clients} clients for {args.minutes:g} min ({args.bad:.0%} bad, {args.oversize:.0%} over the "
            f"size limit); idle RSS {idle / MB:.0f} MB ...")
        start = time.monotonic()
        asyncio.run(closed_loop(endpoint.url, args.clients, 60 * args.minutes, pick, answers))
        memory.stopped.set()
        log(f"  {len(answers)} answers; idle for {args.after:g} s ...")
        time.sleep(args.after)  # the idle reclaim gives back what the load's working set held; a leak stays
        after = idle_rss(endpoint.pid, 3.0)
    minutes = []
    for m in range(int(args.minutes + 0.999)):
        window = [a for a in answers if a.kind == "good" and a.status == 200
                  and start + 60 * m <= a.sent < start + 60 * (m + 1)]
        lat = [1000 * (a.done - a.sent) for a in window]
        rss_window = memory.between(start + 60 * m, start + 60 * (m + 1))
        minutes.append({"minute": m + 1, "good_200": len(window), "p50_ms": percentile(lat, 50),
                        "p99_ms": percentile(lat, 99), "rss_mb": max(rss_window, default=0) / MB,
                        "rss_median_mb": statistics.median(rss_window) / MB if rss_window else 0.0})
    tail_start = start + 60 * max(0.0, args.minutes - 5)
    tail = [(t - tail_start, v / MB) for t, v in memory.samples if t >= tail_start and v]
    slope = _slope(tail) * 60 if len(tail) > 2 else float("nan")
    statuses = Counter(f"{a.kind} {a.status}" for a in answers)
    server_errors = sum(1 for a in answers if isinstance(a.status, int) and a.status >= 500 and a.status != 503)
    return {"clients": args.clients, "minutes": args.minutes, "bad": args.bad, "oversize": args.oversize,
            "allocator": args.allocator, "service_env": dict(args.service_env), "answers": len(answers),
            "statuses": dict(sorted(statuses.items())), "per_minute": minutes, "idle_rss_mb": idle / MB,
            "rss_slope_mb_per_min_last_5": slope, "after_rss_mb": after / MB, "after_over_idle_mb": (after - idle) / MB,
            "targets": {"no_5xx_but_503": server_errors == 0, "rss_slope_le_1mb_per_min": slope <= 1.0,
                        "no_transport_errors": all(isinstance(a.status, int) for a in answers)}}


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")


def throughput(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    import subprocess

    from bench.benchmark import generated_images, image_folder

    images = image_folder(None, workdir) if args.images is None else args.images
    if not any(images.iterdir()):
        images = generated_images(workdir / "images")
    off = {"ALEXNET_MAX_INFLIGHT_BYTES": str(1 << 40), "ALEXNET_MAX_INFLIGHT_IMAGES": str(1 << 30)}
    rates: dict[str, list[float]] = {"admission": [], "none": []}
    with contextlib.ExitStack() as stack:
        urls = {"admission": stack.enter_context(service(args, workdir, log, label="admission on")).url,
                "none": stack.enter_context(service(args, workdir, log, env=off, label="admission off")).url}
        for round_ in range(args.rounds):
            for label in ("admission", "none") if round_ % 2 == 0 else ("none", "admission"):
                command = loadgen_command(urls[label], images, 16, "ten", args.seconds, 10**9)
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                rate = json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"]
                rates[label].append(rate)
                log(f"  round {round_ + 1}: {label:9} {rate:.2f} images/s (load {report.load():.2f})")
    ratio = report.paired_ratio(rates["admission"], rates["none"])
    return {"rounds": args.rounds, "seconds": args.seconds, "images_per_s": rates, "admission_x_none": ratio,
            "targets": {"admission_x_none_ge_0.97": ratio >= 0.97}}


# -- the command line ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-store", type=Path, help="serve a model from this store (default: export a "
                                                         "random-init paper network, 1000 classes)")
    common.add_argument("--model-name")
    common.add_argument("--model-version", type=int)
    common.add_argument("--service-env", type=_env, action="append", default=[], metavar="ALEXNET_NAME=VALUE")
    common.add_argument("--allocator", choices=sorted(ALLOCATORS), default="glibc",
                        help="the service's memory allocator: glibc's defaults, MALLOC_ARENA_MAX=2, or jemalloc")
    common.add_argument("--json", type=Path, help="write the result here (default: bench/results/stress-*.json)")
    b = sub.add_parser("burst", parents=[common], help="many clients with large uploads, then idle")
    b.add_argument("--clients", type=int, default=64)
    b.add_argument("--files", type=int, default=8, help="photos per request (default 8)")
    b.add_argument("--megapixels", type=float, default=12.0)
    b.add_argument("--distinct", type=int, default=8, help="different photos made (default 8)")
    b.add_argument("--seconds", type=float, default=60.0)
    b.add_argument("--after", type=float, default=60.0, help="idle seconds after the burst before RSS is read")
    s = sub.add_parser("soak", parents=[common], help="a long run with bad and oversized uploads mixed in")
    s.add_argument("--clients", type=int, default=64)
    s.add_argument("--minutes", type=float, default=10.0)
    s.add_argument("--bad", type=float, default=0.10, help="share of uploads that are not images or are truncated")
    s.add_argument("--oversize", type=float, default=0.05, help="share of uploads over ALEXNET_MAX_FILE_BYTES")
    s.add_argument("--after", type=float, default=30.0,
                   help="idle seconds after the load before RSS is read again: what stays is retained, not working set")
    t = sub.add_parser("throughput", parents=[common], help="concurrency 16 with and without admission control")
    t.add_argument("--rounds", type=int, default=4)
    t.add_argument("--seconds", type=float, default=15.0)
    t.add_argument("--images", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.int8 = args.int8_version = False  # what resolve_models reads besides the model flags

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.allocator == "jemalloc" and not Path(JEMALLOC).is_file():
        print(f"{PROG}: error: {JEMALLOC} is missing (apt-get install libjemalloc2)", file=sys.stderr)
        return 2
    run = {"burst": burst, "soak": soak, "throughput": throughput}[args.mode]
    environment = report.environment()
    with tempfile.TemporaryDirectory(prefix="alexnet-stress-") as tmp:
        result = run(args, Path(tmp), log)
    result = {"mode": args.mode, "environment": environment, "load_average_end": report.load(), **result}
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2, default=str))
    path = report.write_json(result, args.json, f"stress-{args.mode}")
    print(f"JSON: {path}", file=sys.stderr)
    return 0 if all(result.get("targets", {}).values()) else 1


if __name__ == "__main__":
    sys.exit(main())

