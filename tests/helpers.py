"""Helpers shared by the tests: a real `alexnet-serve` process, test images, multipart files, GPU detection, and
a headless Chromium for the page at / (Debian's chromium + chromium-driver, driven by Selenium).

Imported as ``from helpers import ...`` (pytest puts tests/ on sys.path); fixtures live in conftest.py.
"""

from __future__ import annotations

import functools
import io
import os
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
