"""Send the same images to two running services and check that they answer the same predictions.

    python scripts/container-compare.py http://127.0.0.1:18080 http://127.0.0.1:18081 a.jpg b.jpg

Used by scripts/container-smoke.sh to compare the containerised service with the one run from the host's
venv: same model (name and version), same labels in the same order, probabilities within --tolerance.
Exit status 0 when they agree, 1 when they differ (each difference is printed). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import urllib.request
import uuid
from pathlib import Path


def predict(base_url: str, images: list[Path], top_k: int, crops: str, timeout: float = 120.0) -> dict:
    boundary = uuid.uuid4().hex
    body = bytearray()
    for path in images:
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{path.name}\"\r\n"
                 f"Content-Type: {ctype}\r\n\r\n").encode()
        body += path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/predict?top_k={top_k}&crops={crops}", data=bytes(body), method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def compare(a: dict, b: dict, tolerance: float) -> tuple[list[str], float]:
    """Differences between two /predict answers (empty when they agree) and the largest |Δp|."""
    problems: list[str] = []
    if a["model"] != b["model"]:
        problems.append(f"model: {a['model']} != {b['model']}")
    if len(a["results"]) != len(b["results"]):
        return [*problems, f"{len(a['results'])} results != {len(b['results'])}"], float("inf")
    worst = 0.0
    for ra, rb in zip(a["results"], b["results"], strict=True):
        name = ra.get("filename")
        la = [p["label"] for p in ra["predictions"]]
        lb = [p["label"] for p in rb["predictions"]]
        if la != lb:
            problems.append(f"{name}: labels {la} != {lb}")
            continue
        for pa, pb in zip(ra["predictions"], rb["predictions"], strict=True):
            diff = abs(pa["probability"] - pb["probability"])
            worst = max(worst, diff)
            if diff > tolerance:
                problems.append(f"{name}: {pa['label']}: {pa['probability']!r} vs {pb['probability']!r} "
                                f"(|Δ| {diff:.3g} > {tolerance:g})")
    return problems, worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reference", help="base URL of the reference service (e.g. the host venv's)")
    p.add_argument("candidate", help="base URL of the service under test (e.g. the container's)")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--crops", default="ten", choices=("ten", "center"))
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed |Δ probability|")
    args = p.parse_args(argv)
    ref = predict(args.reference, args.images, args.top_k, args.crops)
    got = predict(args.candidate, args.images, args.top_k, args.crops)
    problems, worst = compare(ref, got, args.tolerance)
    for problem in problems:
        print(f"DIFF {problem}", file=sys.stderr)
    top = ", ".join(f"{r['filename']}: {r['predictions'][0]['label']} {r['predictions'][0]['probability']:.4f}"
                    for r in got["results"])
    print(f"{len(got['results'])} image(s), model {got['model']['name']} v{got['model']['version']}, "
          f"top-{args.top_k} labels {'identical' if not problems else 'DIFFERENT'}, max |Δp| {worst:.2g} "
          f"(tolerance {args.tolerance:g}); reference on {ref.get('provider')}, candidate on {got.get('provider')}; "
          f"top-1 {top}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
