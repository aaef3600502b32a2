"""The load generator: a separate process that drives ``POST /predict`` at a fixed concurrency (closed loop).

    python -m bench.loadgen --url http://127.0.0.1:8000 --concurrency 16 --crops ten --images DIR \\
        --duration 20 --max-requests 400

`concurrency` clients each send one image per request (multipart field ``file``, which the service and the
naive baseline both accept) and send the next as soon as the answer arrives. The first `warmup` answers
(default: one per client) are not measured: they fill the server's queue. Measuring then runs until
`duration` seconds have passed or `max-requests` answers have arrived, whichever comes first; the requests
still in flight finish and count for latency. Prints one JSON object on stdout:

- ``images_per_s``: successful answers that arrived inside the measured window ÷ its length;
- ``latency_ms``: p50/p95/p99/mean/max over the measured requests (sent after the warm-up), successes only;
- ``statuses``: answers by HTTP status; ``errors``: everything that was not a 200 (incl. transport errors).

Loopback only: a URL whose host is not 127.0.0.1, ::1 or localhost is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    ms = [1000 * s for s in seconds]
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99),
            "mean": sum(ms) / len(ms) if ms else math.nan, "max": max(ms) if ms else math.nan}


@dataclass
class Sample:
    sent: float
    done: float
    status: int | str  # HTTP status, or the name of a transport error


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    t0: float | None = None  # measuring starts (warm-up over)
    t1: float | None = None  # measuring stops: no new requests after this


def read_images(directory: Path | None, limit: int) -> list[tuple[str, bytes]]:
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit] if directory else []
    if not files:
        raise SystemExit(f"loadgen: no images in {directory}")
    return [(p.name, p.read_bytes()) for p in files]


async def drive(url: str, images: Sequence[tuple[str, bytes]], *, concurrency: int, crops: str, duration: float,
                max_requests: int, warmup: int, timeout: float = 120.0) -> Run:
    import httpx

    run = Run()
    started = time.perf_counter()
    answered = 0
    counter = iter(range(1 << 62))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    params = {"crops": crops, "top_k": "5"}

    def stop_due(now: float) -> bool:
        if run.t0 is None:  # warm-up that never ends (server down): give up after the duration
            return now - started > duration + 60
        return now - run.t0 >= duration or len(run.samples) >= max_requests

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        async def client_loop() -> None:
            nonlocal answered
            while True:
                now = time.perf_counter()
                if run.t1 is not None or stop_due(now):
                    if run.t1 is None:
                        run.t1 = now
                    return
                name, data = images[next(counter) % len(images)]
                sent = time.perf_counter()
                try:
                    r = await client.post("/predict", params=params, files={"file": (name, data, "image/jpeg")})
                    status: int | str = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                done = time.perf_counter()
                answered += 1
                if run.t0 is None:
                    if answered >= warmup:
                        run.t0 = done
                    continue
                if sent >= run.t0:
                    run.samples.append(Sample(sent, done, status))

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return run


def summarise(run: Run, concurrency: int, crops: str) -> dict:
    ok = [s for s in run.samples if s.status == 200]
    window = (run.t1 - run.t0) if run.t0 is not None and run.t1 is not None else math.nan
    in_window = [s for s in ok if run.t1 is not None and s.done <= run.t1]
    statuses = Counter(str(s.status) for s in run.samples)
    return {
        "concurrency": concurrency, "crops": crops, "requests": len(run.samples), "ok": len(ok),
        "errors": len(run.samples) - len(ok), "statuses": dict(statuses), "window_s": window,
        "images_per_s": len(in_window) / window if window and window > 0 else math.nan,
        "latency_ms": latency_summary([s.done - s.sent for s in ok]),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="base URL of the server (loopback only)")
    p.add_argument("--images", type=Path, required=True, help="folder of images to send (cycled)")
    p.add_argument("--max-images", type=int, default=100, help="at most this many images from the folder")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--crops", choices=["ten", "center"], default="ten")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of measuring, at most")
    p.add_argument("--max-requests", type=int, default=1000, help="measured answers, at most")
    p.add_argument("--warmup", type=int, help="answers not measured (default: one per client)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host = urlsplit(args.url).hostname
    if host not in LOOPBACK:
        print(f"loadgen: refusing {args.url}: loopback only ({', '.join(sorted(LOOPBACK))})", file=sys.stderr)
        return 2
    images = read_images(args.images, args.max_images)
    warmup = args.warmup if args.warmup is not None else args.concurrency
    run = asyncio.run(drive(args.url, images, concurrency=args.concurrency, crops=args.crops,
                            duration=args.duration, max_requests=args.max_requests, warmup=max(1, warmup)))
    print(json.dumps(summarise(run, args.concurrency, args.crops)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
