"""Helpers shared by the tests: a real `alexnet-serve` process, test images, multipart files, GPU detection, and
readers of the container files (Dockerfile stages, compose YAML).


a headless Chromium for the page at / (Debian's chromium + chromium-driver, driven by Selenium).

Imported as ``from helpers import ...`` (pytest puts tests/ on sys.path); fixtures live in conftest.py.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
SHARED_DATA = REPO.parent / "shared" / "data"
SKLEARN_IMAGES = Path(__import__("sklearn").__file__).parent / "datasets" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    exe = shutil.which("alexnet-serve", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "service.cli"]


def image(fmt: str, width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).resize((width, height), Image.Resampling.BICUBIC).save(buf, fmt)
    return buf.getvalue()


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


def files(*items: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


@functools.cache
def cuda_provider_works() -> bool:
    """True only where ONNX Runtime can really run on CUDA (it lists CUDA even where it cannot load it)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return False
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
    except Exception:
        return False
    return session.get_providers()[0] == "CUDAExecutionProvider"


def reuse(loaded, gate: threading.Event | None = None):
    """A repository loader that waits for `gate`, then hands out the already loaded session (no second load)."""

    from service.model import ClassifierModel

    def load(version):
        if gate is not None:
            gate.wait(30)
        model = ClassifierModel(version, providers=["CPUExecutionProvider"])
        model.session = loaded.session
        return model

    return load


def clone_version(root: Path, name: str, source: int, *, corrupt: bool = False) -> int:
    """Publish a copy of `name` v`source` as its next version (`ModelStore.publish_copy`: staged, atomic). The
    copy answers exactly like the source, so only the `version` in answers tells them apart. With `corrupt`, one
    byte of the ONNX file is flipped after the checksum was taken (a damaged copy)."""
    import dataclasses

    from alexnet_store import ModelStore

    store = ModelStore(root)
    src = store.resolve(name, source)
    if not corrupt:
        return store.publish_copy(src).version
    with store.new_version(name) as staging:
        data = bytearray(src.onnx_path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        (staging.path / src.metadata.onnx.file).write_bytes(bytes(data))
        return staging.commit(lambda v: dataclasses.replace(src.metadata, version=v)).version


_BLOCKER = """
import importlib.abc, importlib.machinery, sys
BLOCK = set({blocked!r})
class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ModuleNotFoundError("No module named " + repr(module.__name__) + " (blocked by the test)")
class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, _Refuse()) if name.split(".")[0] in BLOCK else None
sys.meta_path.insert(0, _Blocker())
"""


def python_without(blocked: list[str], code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python in which importing any of `blocked` fails, as on a machine that lacks them
    (the GPU machine has no FastAPI, uvicorn, pydantic or scikit-learn). Finding them still works, so libraries
    that probe for optional packages (PyTorch does) behave as they would there."""
    return subprocess.run([sys.executable, "-c", _BLOCKER.format(blocked=sorted(blocked)) + code], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


async def asgi_post(app, headers: dict[str, str], chunks, path: str = "/predict", *, with_headers: bool = False):
    """POST straight into an ASGI app, the body in `chunks`; returns the status, the JSON answer (and, with
    `with_headers`, the answer's headers) and how many body bytes the app read: what limits and admission
    control are judged by."""
    import asyncio
    import json

    consumed = 0
    iterator = iter(chunks)
    response: dict = {"body": b"", "headers": {}}
    ended = False

    async def receive():
        nonlocal consumed, ended
        if ended:
            await asyncio.sleep(3600)  # a client that has sent everything waits for the answer
        try:
            chunk = next(iterator)
        except StopIteration:
            ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            response["status"] = message["status"]
            response["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            response["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "server": ("test", 80), "client": ("test", 1),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    await app(scope, receive, send)
    body = json.loads(response["body"])
    if with_headers:
        return response["status"], body, response["headers"], consumed
    return response["status"], body, consumed


# -- container files ----------------------------------------------------------------------------------------------
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


@functools.cache
def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, list[tuple[str, str]]]:
    """Stage name → its instructions (FROM first); in file order."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for ins, args in dockerfile_instructions(path.read_text()):
        if ins == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert m and m.group(2), f"every stage is named: FROM {args}"
            current = stages.setdefault(m.group(2), [])
        if current is not None:
            current.append((ins, args))
    return stages


def stage_args(stage: str, instruction: str, path: Path = DOCKERFILE) -> list[str]:
    return [a for i, a in dockerfile_stages(path)[stage] if i == instruction]


@functools.cache
def compose_yaml(path: Path) -> dict:
    """A compose file, read by a SafeLoader that also knows compose's `!reset` (as ("!reset", value))."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: ("!reset", loader.construct_sequence(node)
                                                           if isinstance(node, yaml.SequenceNode) else None))
    with path.open() as f:
        return yaml.load(f, Loader=Loader)


def compose_env(service: dict) -> dict[str, str | None]:
    """A compose service's environment as a dict (None: passed through from the shell when set)."""
    env = service.get("environment", {})
    if isinstance(env, dict):
        return {k: None if v is None else str(v) for k, v in env.items()}
    return {k: (v if sep else None) for k, sep, v in (e.partition("=") for e in env)}


# -- a real browser ----------------------------------------------------------------------------------------------
# Debian's packages (apt-get install chromium chromium-driver); .ci/run installs them where apt is available.
# Both paths are given to Selenium explicitly, so Selenium Manager never runs (it would try to download them).
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--lang=en-US")


def browser_binaries() -> tuple[str | None, str | None]:
    return (shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver"))


def missing_browser() -> str | None:
    """What keeps a headless Chromium from starting here, in words, or None."""
    import importlib.util

    chromium, driver = browser_binaries()
    missing = [what for what, found in (
        ("the selenium package (pip install -e '.[dev]')", importlib.util.find_spec("selenium")),
        ("chromium (apt-get install chromium)", chromium),
        ("chromedriver (apt-get install chromium-driver)", driver)) if not found]
    return "not found: " + ", ".join(missing) if missing else None


def start_chromium(profile: Path, width: int = 1280, height: int = 900):
    """A headless Chromium under chromedriver, with an empty profile in `profile` (the network stays closed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, driver = browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=DriverService(executable_path=driver), options=options)


def set_viewport(driver, width: int, height: int, *, mobile: bool = False) -> None:
    """Emulate a screen of width×height CSS pixels (DevTools' device metrics): a phone with mobile=True."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def full_page_screenshot(driver, path: Path, width: int, *, mobile: bool = False, min_height: int = 600) -> Path:
    """The whole page at `width` CSS pixels, as tall as its content, saved as PNG."""
    set_viewport(driver, width, min_height, mobile=mobile)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    set_viewport(driver, width, max(height, min_height), mobile=mobile)
    driver.execute_script("return new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    driver.save_screenshot(str(path))
    return path


def classify(model, images: list[bytes], *, schemes=("ten",), top_k: int = 5):
    """The service's composition for a loaded model, synchronously: a pipeline from the one factory (the service's
    default settings, one run per call, no queue limit), one call in its own event loop."""
    import asyncio

    from service.metrics import Metrics
    from service.pipeline import PipelineFactory
    from service.settings import Settings

    settings = Settings.model_construct(batching=False, max_queued_inferences=0)
    pipeline = PipelineFactory(settings.pipeline_config(), Metrics()).pipeline(model)
    return asyncio.run(pipeline(images, schemes=schemes, top_k=top_k, all_or_nothing=False))
