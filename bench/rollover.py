"""The rollover measurement: latency while the service switches to a new version under closed-loop load.

A fresh store gets the benchmarked version as v1 and a service that polls it every second (ALEXNET_REPOSITORY_POLL_
SECONDS=1, version policy latest:1). The load generator (a separate process) keeps 16 clients busy with ten-crop
requests; after a third of the time the same network is published again as v2 (`ModelStore.publish_copy`: staged,
renamed into place, as an export publishes). The service then polls, verifies, loads and warms v2 up beside v1 —
the loading competes with serving for the cores — switches, and releases v1 once its requests are done.

Reported, from the load generator's per-request records:
- steady p99: requests sent before the publication (after the load generator's warm-up);
- switch p99: requests sent from the publication until the poll interval + v2's load time + two steady p99s later
  (the time in which polling, loading and draining can touch a request);
- their ratio (issue #12's target: at most 2), the errors over the whole run (target 0), how long after the
  publication the first request was answered by v2, and whether any request sent after that went back to v1.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from alexnet_store import ModelStore, ModelVersion
from bench.loadgen import percentile

POLL_SECONDS = 1.0
CONCURRENCY = 16


def analyse(samples: list[dict[str, Any]], published: float, load_seconds: float) -> dict[str, Any]:
    """The numbers above, from the load generator's records (wall-clock `sent`/`done`, `status`, `version`)."""
    ordered = sorted(samples, key=lambda s: s["done"])
    warm = ordered[CONCURRENCY - 1]["done"] if len(ordered) >= CONCURRENCY else ordered[0]["done"]
    steady = [1000 * (s["done"] - s["sent"]) for s in samples if warm <= s["sent"] < published and s["status"] == 200]
    steady_p99 = percentile(steady, 99)
    window_end = published + POLL_SECONDS + load_seconds + 2 * steady_p99 / 1000
    switch = [1000 * (s["done"] - s["sent"]) for s in samples if published <= s["sent"] < window_end]
    new = [s for s in samples if s.get("version") == 2]
    first_new = min(new, key=lambda s: s["done"]) if new else None
    back = [s for s in samples if first_new and s["sent"] > first_new["done"] and s.get("version") != 2]
    return {
        "requests": len(samples), "errors": sum(1 for s in samples if s["status"] != 200),
        "steady_requests": len(steady), "steady_p50_ms": percentile(steady, 50), "steady_p99_ms": steady_p99,
        "switch_requests": len(switch), "switch_p50_ms": percentile(switch, 50),
        "switch_p99_ms": percentile(switch, 99), "switch_max_ms": max(switch, default=float("nan")),
        "p99_ratio": percentile(switch, 99) / steady_p99 if steady else float("nan"),
        "switch_window_s": window_end - published, "load_seconds": load_seconds,
        "first_v2_sent_after_s": first_new["sent"] - published if first_new else None,
        "answered_by_v1_after_switch": len(back),
    }


def measure_rollover(source: ModelVersion, workdir: Path, images: Path, service_env: dict[str, str], seconds: float,
                     log: Callable[[str], None], server: Callable[..., Any], loadgen: Callable[..., list[str]]
                     ) -> dict[str, Any]:
    """Serve `source` as v1 of a fresh store, publish it again as v2 under load, and analyse the switch."""
    store = ModelStore(workdir / "rollover-store")
    first = store.publish_copy(source)
    env = {**service_env, "ALEXNET_REPOSITORY_POLL_SECONDS": str(POLL_SECONDS)}
    samples_path = workdir / "rollover-samples.jsonl"
    log(f"rollover: serving {first.name} v1 from {store.root}, {CONCURRENCY} clients for {seconds:.0f} s, "
        f"v2 published after {seconds / 3:.0f} s ...")
    with server(first, workdir, env, "rollover", policy="latest:1") as endpoint:
        url = endpoint.url
        command = loadgen(url, images, CONCURRENCY, "ten", seconds, 10**9, "predict", first.name)
        process = subprocess.Popen([*command, "--samples", str(samples_path)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(seconds / 3)
        published = time.time()
        second = store.publish_copy(source)
        _, err = process.communicate(timeout=seconds + 600)
        if process.returncode != 0:
            raise RuntimeError(f"load generator failed ({process.returncode}):\n{err[-3000:]}")
        entry = httpx.get(f"{url}/v1/models/{first.name}/versions/{second.version}", timeout=30).json()
    samples = [json.loads(line) for line in samples_path.read_text().splitlines()]
    result = analyse(samples, published, float(entry.get("load_seconds") or 0.0))
    first = result["first_v2_sent_after_s"]
    log(f"  rollover: steady p99 {result['steady_p99_ms']:.0f} ms, during the switch {result['switch_p99_ms']:.0f} ms "
        f"(× {result['p99_ratio']:.2f}), errors {result['errors']}, v2 loaded in {result['load_seconds']:.1f} s, "
        + ("never answered" if first is None else f"answering {first:.1f} s after publication"))
    return result
