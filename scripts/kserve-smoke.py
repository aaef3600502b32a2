#!/usr/bin/env python3
"""Smoke test of a deployed service over the Open Inference Protocol (KServe v2), with Triton's HTTP client.

    python scripts/kserve-smoke.py --url localhost:8080 --model digits --image cat.jpg
    python scripts/kserve-smoke.py --url INGRESS_HOST:80 --host-header alexnet.default.example.com --model digits \
        --image cat.jpg

The calls KServe's own clients make, in order: server live and ready, server metadata, the model's readiness and
metadata, then one inference with the image. The model's metadata says what it takes: an input of datatype BYTES
gets the image file as it is (the service decodes and crops it), so the check needs nothing of the project.
Prints each answer and exits 0 when all of them succeeded, 1 (with the failing call) otherwise, 2 on bad
arguments. docs/deploy.md shows how to reach an InferenceService from outside the cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PROG = "kserve-smoke"


class SmokeError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"scripts/{PROG}.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="host:port of the service (no scheme), e.g. localhost:8080")
    p.add_argument("--model", required=True, help="model name (the service's model store: <name>/<version>/)")
    p.add_argument("--image", type=Path, required=True, help="an image file to classify")
    p.add_argument("--host-header", help="Host header, to reach an InferenceService through an ingress gateway")
    p.add_argument("--ssl", action="store_true", help="https")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    return p


def smoke(args: argparse.Namespace, out=print) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    headers = {"Host": args.host_header} if args.host_header else None
    client = httpclient.InferenceServerClient(url=args.url, ssl=args.ssl, connection_timeout=args.timeout,
                                              network_timeout=args.timeout)
    try:
        if not client.is_server_live(headers=headers):
            raise SmokeError("GET /v2/health/live: not live")
        out("server live")
        if not client.is_server_ready(headers=headers):
            raise SmokeError("GET /v2/health/ready: not ready")
        out("server ready")
        meta = client.get_server_metadata(headers=headers)
        out(f"server metadata: {json.dumps(meta)}")
        model = args.model
        if not client.is_model_ready(model, headers=headers):
            raise SmokeError(f"GET /v2/models/{model}/ready: not ready")
        out(f"model {model} ready")
        model_meta = client.get_model_metadata(model, headers=headers)
        out(f"model metadata: {json.dumps(model_meta)}")
        inputs = model_meta.get("inputs") or []
        byte_inputs = [i for i in inputs if i.get("datatype") == "BYTES"]
        if not byte_inputs:
            raise SmokeError(f"model {model} has no BYTES input to send an image file to (inputs: {inputs})")
        spec = byte_inputs[0]
        tensor = httpclient.InferInput(spec["name"], [1], "BYTES")
        tensor.set_data_from_numpy(np.array([args.image.read_bytes()], dtype=np.object_), binary_data=True)
        result = client.infer(model, [tensor], headers=headers)
        response = result.get_response()
        out(f"inference: model {response.get('model_name')} version {response.get('model_version')}")
        for output in response.get("outputs", []):
            values = result.as_numpy(output["name"])
            shown = values.tolist() if values is not None else output.get("data")
            out(f"  {output['name']} {output.get('datatype')} {output.get('shape')}: {str(shown)[:300]}")
    except InferenceServerException as exc:
        raise SmokeError(f"{exc.message()} (status {exc.status()})") from exc
    except OSError as exc:  # refused, unreachable, timed out
        raise SmokeError(f"{args.url}: {exc}") from exc
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.image.is_file():
        print(f"{PROG}: error: no image file {args.image}", file=sys.stderr)
        return 2
    try:
        smoke(args)
    except SmokeError as exc:
        print(f"{PROG}: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"{PROG}: PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
