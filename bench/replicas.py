#!/usr/bin/env python3
"""API replicas behind the balancer (docker-compose.replicas.yml), for real: the kill test and the throughput table.

    .venv/bin/python bench/replicas.py kill-test     # make replicas-kill-test
    .venv/bin/python bench/replicas.py bench         # make replicas-bench

kill-test: two CPU replicas behind HAProxy, closed-loop load at concurrency 16 (bench/loadgen.py, real photos,
ten crops). During the load, one replica is killed (`docker kill`, SIGKILL: requests in flight on it are cut),
started again, and later the other one is stopped gracefully (`docker stop`, as a rolling update does) and
started again. Passes only if every request of the run succeeded. It reports what HAProxy saw: the requests in
flight on the killed replica, its retries and redispatches, how long each replica took to leave and rejoin,
and the balancer's log lines of the requests that were retried.

bench: images/s at concurrency 16 with ten crops, for one process using both cores (the plain compose stack,
no balancer) and for 1 and 2 replicas behind the balancer with the cores split between them (a CPU limit of
one core and one ONNX Runtime thread each), plus /health/ready's latency under that load and each replica's
memory. Prints a table with the load average before and after.

Both need Docker with the compose plugin (on this project's dev machine: bash ../shared/container/setup.sh)
and the project venv (`make install`). They use their own compose project (alexnet-replicas) and ports on
127.0.0.1 (REPLICAS_PORT, default 18090, and the next one for the balancer's statistics), never touch
./model_store unless asked (--model-store), and take the stack down however they end. By default the model is
a random-init paper network (1000 classes, as `make bench`), exported into a temporary store.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.benchmark import image_folder
from bench.loadgen import percentile

REPO = Path(__file__).resolve().parent.parent
PROJECT = "alexnet-replicas"
BASE_FILES = ("docker-compose.yml", "docker-compose.cpu.yml")
REPLICAS_FILE = "docker-compose.replicas.yml"
BACKEND = "replicas"  # deploy/balancer/haproxy.cfg's backend
CONCURRENCY = 16
PROG = "replicas"


class Failed(Exception):
    pass


def log(message: str) -> None:
    print(f"[{PROG}] {message}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True,
        capture: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=REPO, env=env, text=True, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
    if check and proc.returncode != 0:
        raise Failed(f"{' '.join(cmd)} exited with {proc.returncode}:\n{(proc.stderr or '')[-3000:]}")
    return proc


# -- the compose stack ------------------------------------------------------------------------------------
@dataclass
class Stack:
    """One configuration of the compose project: its files, environment and published ports."""

    store: Path
    port: int
    balancer: bool = True
    extra_file: Path | None = None
    env_extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.port + 1}/stats;csv"

    def command(self, *args: str) -> list[str]:
        files = [*BASE_FILES, *([REPLICAS_FILE] if self.balancer else [])]
        if self.extra_file:
            files.append(str(self.extra_file))
        return ["docker", "compose", "-p", PROJECT, *(x for f in files for x in ("-f", f)), *args]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALEXNET_", "COMPOSE_"))}
        return {**env, "MODEL_STORE": str(self.store), "ALEXNET_PORT": str(self.port),
                "BALANCER_STATS_PORT": str(self.port + 1), **self.env_extra}

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        return run(self.command(*args), env=self.env(), check=check, timeout=timeout)

    def up(self, replicas: int) -> float:
        """Build what changed, start, and wait until every replica is ready (the balancer routes to each, or,
        without a balancer, /health/ready answers 200); returns the seconds from `up` to ready. With the
        balancer this includes compose's wait for the replicas' healthcheck (every 10 s) before it starts it."""
        services = ["api", "balancer"] if self.balancer else ["api"]
        self.compose("build", *services)
        start = time.monotonic()
        self.compose("up", "-d", "--scale", f"api={replicas}", *services)
        if self.balancer:
            wait_for(lambda: len(up_servers(self)) == replicas, 300, f"HAProxy to see {replicas} replica(s) up")
        else:
            wait_for(lambda: httpx.get(f"{self.url}/health/ready", timeout=5).status_code == 200, 300,
                     f"{self.url}/health/ready")
        return time.monotonic() - start

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", check=False, timeout=300)

    def api_containers(self) -> list[str]:
        ids = self.compose("ps", "-q", "api").stdout.split()
        return sorted(ids, key=container_name)


def container_name(container: str) -> str:
    return run(["docker", "inspect", "-f", "{{.Name}}", container]).stdout.strip().lstrip("/")


def container_ip(container: str) -> str:
    return run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                container]).stdout.strip()


def container_memory(container: str) -> str:
    return run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container]).stdout.split("/")[0].strip()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        if time.monotonic() - start > timeout:
            raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- HAProxy's statistics -----------------------------------------------------------------------------------
def haproxy_stats(stack: Stack) -> list[dict[str, str]]:
    text = httpx.get(stack.stats_url, timeout=5).text
    return list(csv.DictReader(io.StringIO(text.lstrip("# "))))


def servers(stack: Stack, rows: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """The backend's server slots that hold a replica (server-template slots without an address are left out)."""
    rows = haproxy_stats(stack) if rows is None else rows
    return [r for r in rows if r["pxname"] == BACKEND and r["svname"] not in ("FRONTEND", "BACKEND")
            and r.get("addr") and not r["addr"].startswith("0.0.0.0")]


def up_servers(stack: Stack) -> list[dict[str, str]]:
    return [r for r in servers(stack) if r["status"] == "UP"]


def backend_row(rows: list[dict[str, str]]) -> dict[str, str]:
    return next(r for r in rows if r["pxname"] == BACKEND and r["svname"] == "BACKEND")


def slot_of(stack: Stack, ip: str, rows: list[dict[str, str]] | None = None) -> dict[str, str] | None:
    return next((r for r in servers(stack, rows) if r["addr"].split(":")[0] == ip), None)


def counter(row: dict[str, str] | None, name: str) -> int:
    return int(row[name] or 0) if row else 0


# -- load -----------------------------------------------------------------------------------------------------
def start_load(url: str, images: Path, duration: float, crops: str = "ten") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", url, "--images", str(images), "--concurrency",
           str(CONCURRENCY), "--crops", crops, "--duration", str(duration), "--max-requests", str(10**9)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_load(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise Failed(f"the load generator exited with {proc.returncode}: {err[-2000:]}")
    return json.loads(out)


class ProbeSampler(threading.Thread):
    """Polls a health path every `interval` s while the load runs: the latency a kubelet's probe would see."""

    def __init__(self, url: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    status = client.get(self.url).status_code
                    if status == 200:
                        self.latencies_ms.append(1000 * (time.perf_counter() - start))
                    else:
                        self.failures.append(str(status))
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                self.stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        ms = self.latencies_ms
        return {"n": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
                "max_ms": max(ms) if ms else float("nan"), "failures": self.failures}


# -- inputs ---------------------------------------------------------------------------------------------------
@contextmanager
def model_store(requested: Path | None):
    """The store to serve: the one asked for, or a random-init paper network exported into a temporary one."""
    if requested is not None:
        root = requested.resolve()
        if not root.is_dir() or not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
            raise Failed(f"model store {root} holds no models (make demo, or leave out --model-store)")
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="alexnet-replicas-") as tmp:
        root = Path(tmp) / "store"
        log("exporting a random-init paper network (1000 classes) into a temporary store ...")
        run([str(Path(sys.executable).parent / "alexnet-export"), "--model-store", str(root), "--name", "bench",
             "--random-init", "--num-classes", "1000", "--init", "kaiming"])
        for path in [Path(tmp), *root.rglob("*")]:  # the container's user (uid 10001) reads it
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root


def check_docker() -> None:
    setup = "here: bash ../shared/container/setup.sh"
    for cmd, hint in ((["docker", "info"], f"the docker daemon is not reachable ({setup})"),
                      (["docker", "compose", "version"], "the docker compose v2 plugin is missing")):
        try:
            if run(cmd, check=False).returncode != 0:
                raise Failed(hint)
        except FileNotFoundError as exc:
            raise Failed(f"docker is not installed ({setup})") from exc


def one_core_override(directory: Path) -> Path:
    """A compose override giving each replica one core (a CPU limit, as Kubernetes' limits.cpu) and one thread."""
    path = directory / "one-core.yml"
    path.write_text(
        "services:\n"
        "  api:\n"
        "    deploy:\n"
        "      resources:\n"
        "        limits:\n"
        "          cpus: \"1\"\n"
        "    environment:\n"
        "      - ALEXNET_INTRA_OP_THREADS=1\n"
        "      - ALEXNET_DECODE_THREADS=1\n")
    return path


# -- kill test ---------------------------------------------------------------------------------------------------
# httplog: "[accept date] frontend backend/server TR/Tw/Tc/Tr/Ta status ... termination-state
# actconn/feconn/beconn/srv_conn/retries" ("+" before the retries: redispatched to another server)
HTTPLOG = re.compile(r"\[(?P<accept>\d+/\w+/\d+:\d+:\d+:\d+\.\d+)\] \S+ \S+ [-\d]+/[-\d]+/[-\d]+/[-\d]+/(?P<ta>\d+) "
                     r".* [A-Za-z-]{4} \d+/\d+/\d+/\d+/(?P<redispatched>\+?)(?P<retries>\d+) ")


def balancer_log(stack: Stack, since: str) -> list[str]:
    return stack.compose("logs", "--no-log-prefix", "--since", since, "balancer", check=False).stdout.splitlines()


def state_changes(lines: list[str]) -> list[str]:
    """The balancer's own lines about its replicas: DNS changes, checks failing, servers going up or down."""
    return [line.strip() for line in lines
            if line.startswith(f"Server {BACKEND}/") or line.startswith(f"{BACKEND}/")
            or line.startswith("Health check for server")]


def retried_requests(lines: list[str]) -> list[tuple[float, str]]:
    """(completion time, log line) of every request the balancer retried or redispatched."""
    out = []
    for line in lines:
        m = HTTPLOG.search(line)
        if m and (m.group("redispatched") or int(m.group("retries")) > 0):
            accepted = dt.datetime.strptime(m.group("accept"), "%d/%b/%Y:%H:%M:%S.%f").replace(tzinfo=dt.UTC)
            out.append((accepted.timestamp() + int(m.group("ta")) / 1000, line.strip()))
    return out


def kill_test(args: argparse.Namespace) -> dict[str, Any]:
    images = image_folder(args.images, Path(tempfile.mkdtemp(prefix="alexnet-replicas-images-")))
    with model_store(args.model_store) as store:
        stack = Stack(store=store, port=args.port)
        stack.down()
        try:
            log("starting 2 replicas and the balancer (building the images if needed) ...")
            took = stack.up(2)
            log(f"up and ready in {took:.1f} s")
            a, b = stack.api_containers()
            names = {a: container_name(a), b: container_name(b)}
            since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
            before = backend_row(haproxy_stats(stack))
            duration = args.phase * 6
            log(f"closed-loop load: concurrency {CONCURRENCY}, ten crops, {duration:.0f} s")
            load = start_load(stack.url, images, duration)
            events: dict[str, Any] = {}
            t0 = time.monotonic()

            def at(seconds: float) -> None:
                time.sleep(max(0.0, t0 + seconds - time.monotonic()))

            # 1. SIGKILL one replica: what was in flight on it must be retried elsewhere
            at(args.phase)
            ip_a = container_ip(a)
            rows = haproxy_stats(stack)
            slot_a = slot_of(stack, ip_a, rows)
            in_flight = counter(slot_a, "scur")
            run(["docker", "kill", a])
            killed, killed_at = time.monotonic(), time.time()
            log(f"docker kill {names[a]} with {in_flight} request(s) in flight on it")
            out = wait_for(lambda: slot_of(stack, ip_a) is None or slot_of(stack, ip_a)["status"] != "UP", 30,
                           f"HAProxy to take {names[a]} out")
            events["kill"] = {"replica": names[a], "slot": slot_a and slot_a["svname"], "in_flight": in_flight,
                              "taken_out_s": round(out, 2)}
            log(f"HAProxy took it out after {out:.2f} s")

            # 2. it comes back: restarted by Docker's restart policy, or started again (as an orchestrator would),
            #    and gets traffic once its model is loaded and warmed up
            at(2 * args.phase)
            restarted = run(["docker", "inspect", "-f", "{{.State.Running}}", a]).stdout.strip() == "true"
            if not restarted:
                run(["docker", "start", a])
            ip_a = container_ip(a)
            wait_for(lambda: (s := slot_of(stack, ip_a)) is not None and s["status"] == "UP", 120,
                     f"{names[a]} to rejoin")
            events["rejoin"] = {"replica": names[a], "restarted_by_docker": restarted,
                                "out_for_s": round(time.monotonic() - killed, 1)}
            log(f"{names[a]} {'restarted by docker' if restarted else 'started again'}; back in the balancer "
                f"{events['rejoin']['out_for_s']} s after the kill")

            # 3. a graceful stop of the other replica (SIGTERM: a rolling update, a scale-down)
            at(4 * args.phase)
            ip_b = container_ip(b)
            slot_b = slot_of(stack, ip_b)
            in_flight_b = counter(slot_b, "scur")
            stop_start, stopped_at = time.monotonic(), time.time()
            run(["docker", "stop", b], timeout=120)
            stopped = time.monotonic() - stop_start
            events["stop"] = {"replica": names[b], "slot": slot_b and slot_b["svname"], "in_flight": in_flight_b,
                              "stop_took_s": round(stopped, 2)}
            log(f"docker stop {names[b]} ({in_flight_b} in flight) returned after {stopped:.1f} s")
            run(["docker", "start", b])
            ip_b = container_ip(b)
            back_b = wait_for(lambda: (s := slot_of(stack, ip_b)) is not None and s["status"] == "UP", 120,
                              f"{names[b]} to rejoin")
            events["stop"]["up_after_start_s"] = round(back_b, 2)

            result = finish_load(load, timeout=duration + 300)
            after = backend_row(haproxy_stats(stack))
            served = {names[c]: counter(slot_of(stack, container_ip(c)), "stot") for c in (a, b)}
            lines = balancer_log(stack, since)
            retried = retried_requests(lines)
            events["kill"]["retried"] = [line for done, line in retried if killed_at <= done < stopped_at]
            events["stop"]["retried"] = [line for done, line in retried if done >= stopped_at]
            return {
                "load": result, "events": events,
                "balancer": {"retries": counter(after, "wretr") - counter(before, "wretr"),
                             "redispatches": counter(after, "wredis") - counter(before, "wredis"),
                             "served_since_rejoin": served, "retried_requests": len(retried),
                             "state_changes": state_changes(lines)},
                "phase": args.phase, "passed": result["errors"] == 0 and result["ok"] > 0,
            }
        finally:
            if args.keep:
                log(f"--keep: the stack stays up ({' '.join(stack.command('down'))} to remove it)")
            else:
                stack.down()


def print_kill_test(r: dict[str, Any]) -> None:
    load, ev, bal = r["load"], r["events"], r["balancer"]
    print(f"requests: {load['requests']} sent, {load['ok']} ok, {load['errors']} failed "
          f"(statuses {load['statuses']}); {load['images_per_s']:.1f} images/s, "
          f"p50 {load['latency_ms']['p50']:.0f} ms, p99 {load['latency_ms']['p99']:.0f} ms, "
          f"max {load['latency_ms']['max']:.0f} ms")
    kill, rejoin, stop = ev["kill"], ev["rejoin"], ev["stop"]
    how = "restarted by Docker" if rejoin["restarted_by_docker"] else f"docker start at {2 * r['phase']:.0f} s"
    print(f"docker kill {kill['replica']} (balancer slot {kill['slot']}) at {r['phase']:.0f} s: "
          f"{kill['in_flight']} request(s) in flight on it, {len(kill['retried'])} retried on the other replica; "
          f"out of the balancer after {kill['taken_out_s']} s; {how}, back in the balancer "
          f"{rejoin['out_for_s']} s after the kill")
    print(f"docker stop {stop['replica']} (balancer slot {stop['slot']}) at {4 * r['phase']:.0f} s: "
          f"{stop['in_flight']} request(s) in flight on it, {len(stop['retried'])} retried on the other replica; "
          f"the stop took {stop['stop_took_s']} s; back {stop['up_after_start_s']} s after docker start")
    print(f"balancer: {bal['retries']} retries, {bal['redispatches']} redispatches, {bal['retried_requests']} "
          f"retried requests in its log; requests served after rejoining: {bal['served_since_rejoin']}")
    print("the balancer's log about its replicas:")
    for line in bal["state_changes"]:
        print(f"  {line}")
    print("requests the balancer retried (its log: ... backend/server-that-answered ... /+retries):")
    for event in ("kill", "stop"):
        for line in ev[event]["retried"]:
            print(f"  ({event}) {line}")
    print("PASSED: no request failed" if r["passed"] else "FAILED: some requests failed")


# -- throughput -----------------------------------------------------------------------------------------------------
@dataclass
class Config:
    label: str
    replicas: int
    balancer: bool
    one_core: bool


CONFIGS = (
    Config("1 process, 2 cores, no balancer", 1, balancer=False, one_core=False),
    Config("1 replica, 2 cores, balancer", 1, balancer=True, one_core=False),
    Config("1 replica, 1 core, balancer", 1, balancer=True, one_core=True),
    Config("2 replicas, 1 core each, balancer", 2, balancer=True, one_core=True),
)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="alexnet-replicas-bench-"))
    images = image_folder(args.images, work / "images")
    env = report.environment()
    rows = []
    with model_store(args.model_store) as store:
        for config in CONFIGS:
            stack = Stack(store=store, port=args.port, balancer=config.balancer,
                          extra_file=one_core_override(work) if config.one_core else None)
            stack.down()
            try:
                log(f"{config.label}: starting ...")
                took = stack.up(config.replicas)
                probe = ProbeSampler(f"{stack.url}/health/ready")
                load = start_load(stack.url, images, args.duration)
                time.sleep(3)  # after the load generator's warm-up answers
                probe.start()
                result = finish_load(load, timeout=args.duration + 300)
                probe.stop.set()
                probe.join()
                memory = [container_memory(c) for c in stack.api_containers()]
                rows.append({"config": config.label, "replicas": config.replicas, "up_s": round(took, 1),
                             "load": result, "probe": probe.summary(), "memory": memory})
                log(f"{config.label}: {result['images_per_s']:.1f} images/s, {result['errors']} errors")
            finally:
                stack.down()
    return {"environment": env, "load_after": list(os.getloadavg()), "concurrency": CONCURRENCY,
            "duration_s": args.duration, "rows": rows}


def print_bench(r: dict[str, Any]) -> None:
    env = r["environment"]
    print(f"{env['cpu']} ({env['cpus']} cores), onnxruntime {env['onnxruntime']}; concurrency {r['concurrency']}, "
          f"ten crops, {r['duration_s']:.0f} s each; load average before {env['load_average'][0]:.2f}, "
          f"after {r['load_after'][0]:.2f}")
    base = r["rows"][0]["load"]["images_per_s"]
    table = [[row["config"], row["load"]["images_per_s"], row["load"]["images_per_s"] / base,
              row["load"]["latency_ms"]["p50"], row["load"]["latency_ms"]["p99"], row["load"]["errors"],
              row["probe"]["p50_ms"], row["probe"]["max_ms"], row["up_s"], ", ".join(row["memory"])]
             for row in r["rows"]]
    print(report.table(table, ["configuration", "images/s", "÷ 1 process", "p50 ms", "p99 ms", "errors",
                               "probe p50 ms", "probe max ms", "ready in s", "memory per replica"]))
    for row in r["rows"]:
        if row["probe"]["failures"]:
            print(f"{row['config']}: /health/ready failed {len(row['probe']['failures'])} time(s) under load: "
                  f"{sorted(set(row['probe']['failures']))}")


# -- command line ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/replicas.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-store", type=Path,
                        help="serve this store (default: a random-init paper network in a temporary store)")
    common.add_argument("--images", type=Path,
                        help="JPEGs to send (default: ../shared/data/imagenet-samples, else generated ones)")
    common.add_argument("--port", type=int, default=int(os.environ.get("REPLICAS_PORT", "18090")),
                        help="127.0.0.1 port of the service; the next one is the balancer's statistics "
                             "(env REPLICAS_PORT; default 18090)")
    common.add_argument("--json", type=Path,
                        help="write the result here (default: bench/results/replicas-<command>-<time>.json)")
    k = sub.add_parser("kill-test", parents=[common], help="kill and stop replicas under load; no request may fail")
    k.add_argument("--phase", type=float, default=15.0,
                   help="seconds between events (kill at 1×, start at 2×, stop the other at 4×, end at 6×)")
    k.add_argument("--keep", action="store_true", help="leave the stack up afterwards (to look at it)")
    b = sub.add_parser("bench", parents=[common], help="throughput of 1 process vs 1 and 2 replicas")
    b.add_argument("--duration", type=float, default=30.0, help="seconds of measuring per configuration")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_docker()
        if args.command == "kill-test":
            result = kill_test(args)
            print_kill_test(result)
        else:
            result = bench(args)
            print_bench(result)
    except Failed as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    path = report.write_json(result, args.json, f"replicas-{args.command}")
    log(f"wrote {path}")
    return 0 if result.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
