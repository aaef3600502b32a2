"""alexnet-bench's command line and the load generator's arithmetic (the benchmark itself is run, not tested)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
from fastapi import FastAPI, File, UploadFile

from bench import benchmark, loadgen


def test_alexnet_bench_help_works():
    exe = shutil.which("alexnet-bench", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "bench.benchmark"]
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for flag in ("--model-store", "--int8", "--concurrency", "--quick", "--plot", "--json", "--service-env", "--peers"):
        assert flag in done.stdout


def test_bad_arguments_are_one_line_errors(capsys):
    for argv in (["--concurrency", "0,4"], ["--crops", "five"], ["--service-env", "FOO=1"], ["--peers", "triton"]):
        with pytest.raises(SystemExit) as info:
            benchmark.build_parser().parse_args(argv)
        assert info.value.code == 2
    assert "error" in capsys.readouterr().err
    assert benchmark.build_parser().parse_args(["--peers"]).peers == ["litserve", "torchserve"]
    assert benchmark.build_parser().parse_args(["--peers", "torchserve"]).peers == ["torchserve"]
    assert benchmark.build_parser().parse_args([]).peers is None


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(q):
    rng = np.random.default_rng(int(q * 10))
    for n in (1, 2, 7, 100, 1001):
        values = rng.exponential(100.0, n).tolist()
        assert loadgen.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_by_hand():
    assert loadgen.percentile([10, 20, 30, 40], 50) == 25
    assert loadgen.percentile([40, 10, 30, 20], 99) == pytest.approx(40 - 0.03 * 10)
    assert loadgen.percentile([5], 99) == 5
    assert math.isnan(loadgen.percentile([], 50))
    with pytest.raises(ValueError):
        loadgen.percentile([1, 2], 101)


def test_window_counts_every_answer_inside_it_and_latency_of_requests_sent_inside():
    S = loadgen.Sample
    run = loadgen.Run(samples=[
        S(0.0, 1.0, 200),  # warm-up: sent and answered before t0
        S(0.5, 2.5, 200),  # sent before t0, answered inside: counts for throughput, not latency
        S(2.0, 3.0, 200),
        S(2.5, 3.5, 503),
        S(3.0, 4.0, 200),
        S(5.5, 6.5, 200),  # sent inside, answered after t1 (drain): latency only
    ], t0=2.0, t1=6.0)
    s = loadgen.summarise(run, concurrency=2, crops="ten")
    assert s["window_s"] == 4.0
    assert s["images_per_s"] == pytest.approx(3 / 4.0)
    assert (s["requests"], s["ok"], s["errors"]) == (4, 3, 1)
    assert s["statuses"] == {"200": 3, "503": 1}
    assert s["latency_ms"]["p50"] == pytest.approx(1000.0)


def test_loadgen_refuses_anything_but_loopback(tmp_path, capsys):
    assert loadgen.main(["--url", "http://example.com:8000", "--images", str(tmp_path)]) == 2
    assert "loopback only" in capsys.readouterr().err


def test_summary_reports_targets_from_the_run_itself():
    def row(target, crops, c, ips, p99=100.0, errors=0, ceiling=None):
        r = {"target": target, "crops": crops, "concurrency": c, "images_per_s": ips, "errors": errors,
             "latency_ms": {"p99": p99}}
        if ceiling:
            r["ceiling"] = {"ms_median": ceiling[0], "ms_p99": 1.25 * ceiling[0], "images_per_s": ceiling[1]}
            r["x_ceiling"] = ips / ceiling[1]
        return r

    result = {
        "plan": {"crops": ["ten"], "concurrency": [1, 16]},
        "environment": {"cpu_flags": ["avx2", "avx512_vnni"]},
        "runs": [row("service fp32", "ten", 1, 5.0, p99=130.0, ceiling=(125.0, 8.0)),
                 row("service fp32", "ten", 16, 9.0, ceiling=(800.0, 10.0)),
                 row("service int8", "ten", 16, 27.0), row("naive baseline", "ten", 16, 4.5)],
    }
    summary = benchmark.summarise(result)
    t = summary["targets"]
    assert t["service_x_ceiling_c16_ten"]["value"] == pytest.approx(0.9) and t["service_x_ceiling_c16_ten"]["holds"]
    assert t["service_x_baseline_c16_ten"]["value"] == pytest.approx(2.0)
    assert t["int8_x_fp32_c16_ten"] == {"value": pytest.approx(3.0), "target": 2.5, "holds": True}
    assert t["p99_c1_x_model_one_image"]["value"] == pytest.approx(130 / 125)
    assert t["p99_c1_x_model_one_image"]["holds"]
    assert t["p99_c1_x_model_one_image"]["p99_x_model_p99"] == pytest.approx(130 / (1.25 * 125))
    c1 = next(r for r in summary["ratios"] if r["concurrency"] == 1)
    assert math.isnan(c1["x_baseline"]) and c1["x_ceiling"] == pytest.approx(5 / 8)


def test_pre_encoded_multipart_body_is_what_fastapi_reads():
    with warnings.catch_warnings():  # starlette asks for httpx2 in the test client; httpx is what is installed
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    app = FastAPI()

    @app.post("/predict")
    async def predict(file: Annotated[UploadFile, File()]) -> dict:
        return {"name": file.filename, "type": file.content_type, "data": (await file.read()).hex()}

    data = bytes(range(256)) * 3 + b"\r\n--" + loadgen.BOUNDARY.encode()[:5]  # bytes that look like a boundary
    body = loadgen.multipart_body("photo.JPEG", data)
    with TestClient(app) as c:
        r = c.post("/predict", content=body,
                   headers={"content-type": f"multipart/form-data; boundary={loadgen.BOUNDARY}"})
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "photo.JPEG", "type": "image/jpeg", "data": data.hex()}
