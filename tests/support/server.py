"""A real `alexnet-serve` process: started on a free port, ready when /health/ready says 200, stopped by SIGTERM."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    exe = shutil.which("alexnet-serve", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "service.cli"]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    statuses_before_ready: list[str]

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


def start_server(root: Path, log: Path, *extra: str, env: dict[str, str] | None = None,
                 timeout: float = 120) -> Server:
    port = free_port()
    environment = {**os.environ, "ALEXNET_LOG_LEVEL": "warning", "ALEXNET_MAX_FILE_BYTES": "3000000",
                   "ALEXNET_MAX_FILES_PER_REQUEST": "10", "ALEXNET_MAX_REQUEST_BYTES": "30000000", **(env or {})}
    if "PROMETHEUS_MULTIPROC_DIR" not in (env or {}):  # this process's own setting is not the server's
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "w") as fh:
        process = subprocess.Popen(
            [*serve_command(), "--model-store", str(root), "--models", "testnet", "--host", "127.0.0.1",
             "--port", str(port), *extra],
            stdout=fh, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"alexnet-serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            status = httpx.get(f"{url}/health/ready", timeout=5).status_code
        except httpx.TransportError:
            status = "refused"
        if not seen or seen[-1] != str(status):
            seen.append(str(status))
        if status == 200:
            return Server(url, process, log, seen)
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"not ready after {timeout} s:\n{log.read_text()}")


def stop_server(server: Server) -> int:
    server.process.terminate()
    try:
        return server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise
