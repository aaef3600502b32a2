"""The load generator: a separate process that drives the service at a fixed concurrency (closed loop).

    python -m bench.loadgen --url http://127.0.0.1:8000 --concurrency 16 --crops ten --images DIR \\
        --duration 20 --max-requests 400 [--protocol v2 --model alexnet] [--samples FILE]

`concurrency` clients each send one image per request and send the next as soon as the answer arrives: with
``--protocol predict`` (the default) to ``POST /predict`` (multipart field ``file``, which the service and the
naive baseline both accept), with ``--protocol v2`` to ``POST /v2/models/MODEL/infer`` as tritonclient sends
it (the binary tensor data extension: a JSON header, then the image as one BYTES element); the peers of
``alexnet-bench --peers`` (bench/peers.py) as their users call them: ``--protocol litserve`` to LitServe's
``POST /predict`` (the same multipart field ``file``, no query: a peer serves one crop scheme), ``--protocol
torchserve`` to TorchServe's ``POST /predictions/MODEL`` (the raw image bytes). The first `warmup` answers
(default: one per client) are not measured: they fill the server's queue. Measuring then runs until
`duration` seconds have passed or `max-requests` answers have arrived, whichever comes first; the requests
still in flight finish and count for latency. Prints one JSON object on stdout:

- ``images_per_s``: successful answers that arrived inside the measured window ÷ its length (whenever they
  were sent: with a closed loop the server is kept equally busy all along the window);
- ``latency_ms``: p50/p95/p99/mean/max over the requests sent inside the window, successes only;
- ``statuses``: their answers by HTTP status; ``errors``: everything that was not a 200 (incl. transport errors).

``--samples FILE`` also writes every request as a JSON line (``sent``, ``done`` as wall-clock seconds, ``status``
and, for 200 answers, the ``version`` that answered): what the rollover measurement reads.

Loopback only: a URL whose host is not 127.0.0.1, ::1 or localhost is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import mimetypes
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np  # ~80 ms at start-up, before any request is sent: nothing measured pays for it

from alexnet_store.vocabulary import IMAGE_SUFFIXES

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
BOUNDARY = "alexnet-loadgen-7d3f0c9b5e2a4f18"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), numpy's linear method; NaN for no values (numpy raises IndexError there),
    ValueError for q outside 0..100 (numpy's own)."""
    if not values:
        return math.nan
    return float(np.percentile(values, q))


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    ms = [1000 * s for s in seconds]
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99),
            "mean": sum(ms) / len(ms) if ms else math.nan, "max": max(ms) if ms else math.nan}


@dataclass
class Sample:
    sent: float
    done: float
    status: int | str  # HTTP status, or the name of a transport error
    version: int | None = None  # the model version that answered (when versions are recorded)


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    t0: float | None = None  # measuring starts: the warm-up's last answer
    t1: float | None = None  # measuring stops: no new requests after this
    measured: int = 0  # answers after t0


def read_images(directory: Path | None, limit: int) -> list[tuple[str, bytes]]:
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit] if directory else []
    if not files:
        raise SystemExit(f"loadgen: no images in {directory}")
    return [(p.name, p.read_bytes()) for p in files]


def v2_body(data: bytes, crops: str) -> tuple[bytes, dict[str, str]]:
    """One image as an Open Inference Protocol request with the binary tensor data extension (tritonclient's
    encoding: a JSON header, then a 4-byte little-endian length and the bytes), encoded once."""
    raw = struct.pack("<I", len(data)) + data
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"classification": 5}}],
                         "parameters": {"crops": crops}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "content-type": "application/octet-stream"}


def multipart_body(name: str, data: bytes, boundary: str = BOUNDARY) -> bytes:
    """One image as a multipart/form-data body in the field ``file``, encoded once: the load generator shares
    the server's cores, so the less CPU it spends per request, the less it takes from what is measured."""
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: {mimetypes.guess_type(name)[0] or 'application/octet-stream'}\r\n\r\n")
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode()


PROTOCOLS = ("predict", "v2", "litserve", "torchserve")


def encode_request(protocol: str, name: str, data: bytes, crops: str,
                   model: str | None = None) -> tuple[str, dict[str, str], bytes, dict[str, str]]:
    """One image as `protocol` sends it, encoded once: (path, query parameters, body, headers)."""
    if protocol == "v2":
        body, headers = v2_body(data, crops)
        return f"/v2/models/{model}/infer", {}, body, headers
    if protocol == "torchserve":  # the raw bytes, as `curl -T photo.jpg` sends them
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return f"/predictions/{model or 'alexnet'}", {}, data, {"content-type": kind}
    multipart = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    if protocol == "litserve":  # a LitServe peer serves one crop scheme and answers its top 5
        return "/predict", {}, multipart_body(name, data), multipart
    params = {"crops": crops, "top_k": "5", **({"model": model} if model else {})}
    return "/predict", params, multipart_body(name, data), multipart


async def drive(url: str, images: Sequence[tuple[str, bytes]], *, concurrency: int, crops: str, duration: float,
                max_requests: int, warmup: int, timeout: float = 120.0, protocol: str = "predict",
                model: str | None = None, versions: bool = False) -> Run:
    import httpx

    run = Run()
    started = time.perf_counter()
    counter = iter(range(1 << 62))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    encoded = [encode_request(protocol, name, data, crops, model) for name, data in images]
    path, params = encoded[0][:2]
    bodies, headers = [e[2] for e in encoded], [e[3] for e in encoded]

    def stop_due(now: float) -> bool:
        if run.t0 is None:  # a warm-up that never ends (server down): give up after the duration
            return now - started > duration + 60
        return now - run.t0 >= duration or run.measured >= max_requests

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        async def client_loop() -> None:
            while run.t1 is None:
                now = time.perf_counter()
                if stop_due(now):
                    run.t1 = now
                    return
                i = next(counter) % len(bodies)
                sent = time.perf_counter()
                version = None
                try:
                    r = await client.post(path, params=params, content=bodies[i], headers=headers[i])
                    status: int | str = r.status_code
                    if versions and status == 200:
                        version = answered_version(r, protocol)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                done = time.perf_counter()
                run.samples.append(Sample(sent, done, status, version))
                if run.t0 is None and len(run.samples) >= warmup:
                    run.t0 = done
                elif run.t0 is not None:
                    run.measured += 1

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return run


def answered_version(response, protocol: str) -> int | None:
    """The model version named in an answer (a JSON header ahead of any binary part, for v2)."""
    if protocol in ("litserve", "torchserve"):  # the peers serve one version and do not say which
        return None
    if protocol == "v2":
        split = response.headers.get("inference-header-content-length")
        header = json.loads(response.content[:int(split)] if split else response.content)
        return int(header["model_version"])
    return int(response.json()["model"]["version"])


def summarise(run: Run, concurrency: int, crops: str) -> dict:
    """Throughput: every success that arrived inside [t0, t1]; latency and errors: requests sent from t0 on."""
    if run.t0 is None or run.t1 is None:
        raise RuntimeError("the warm-up never finished")
    window = run.t1 - run.t0
    arrived = [s for s in run.samples if s.status == 200 and run.t0 < s.done <= run.t1]
    measured = [s for s in run.samples if s.sent >= run.t0]
    ok = [s for s in measured if s.status == 200]
    return {
        "concurrency": concurrency, "crops": crops, "requests": len(measured), "ok": len(ok),
        "errors": len(measured) - len(ok), "statuses": dict(Counter(str(s.status) for s in measured)),
        "window_s": window, "images_per_s": len(arrived) / window if window > 0 else math.nan,
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
    p.add_argument("--protocol", choices=PROTOCOLS, default="predict",
                   help="POST /predict (multipart), the Open Inference Protocol's infer (binary tensor data), or a "
                        "peer's: LitServe's POST /predict (multipart), TorchServe's POST /predictions/MODEL (raw)")
    p.add_argument("--model", help="model name (required with --protocol v2; /predict: the service's only model; "
                                   "torchserve: default alexnet)")
    p.add_argument("--samples", type=Path, help="write every request as a JSON line here (with the answering version)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host = urlsplit(args.url).hostname
    if host not in LOOPBACK:
        print(f"loadgen: refusing {args.url}: loopback only ({', '.join(sorted(LOOPBACK))})", file=sys.stderr)
        return 2
    if args.protocol == "v2" and not args.model:
        print("loadgen: --protocol v2 needs --model", file=sys.stderr)
        return 2
    images = read_images(args.images, args.max_images)
    warmup = args.warmup if args.warmup is not None else args.concurrency
    run = asyncio.run(drive(args.url, images, concurrency=args.concurrency, crops=args.crops,
                            duration=args.duration, max_requests=args.max_requests, warmup=max(1, warmup),
                            protocol=args.protocol, model=args.model, versions=args.samples is not None))
    if args.samples is not None:
        offset = time.time() - time.perf_counter()  # wall clock, comparable with other processes' time.time()
        with open(args.samples, "w") as fh:
            for s in run.samples:
                fh.write(json.dumps({"sent": s.sent + offset, "done": s.done + offset, "status": s.status,
                                     "version": s.version}) + "\n")
    print(json.dumps(summarise(run, args.concurrency, args.crops)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
