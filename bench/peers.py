"""`alexnet-bench --peers`: the same model served by LitServe and by TorchServe, measured beside the service.

    alexnet-bench --peers                                # both peers, every level and crops mode of the sweep
    alexnet-bench --peers litserve --concurrency 1,16,64 --no-baseline --no-rollover

Needs the ``peers`` extra (``pip install -e '.[peers]'``: litserve, torchserve, torch-model-archiver) and, for
TorchServe, Java 11+; the serving image has none of them. Each peer runs alone (one at a time, started once per
crops mode and stopped before the next), driven by the same load generator as the service.

The fairness rules (docs/benchmark.md, "Peers"):

1. **Same model.** Both peers serve the network of the service's model version. LitServe (bench/peer_litserve.py)
   runs ONNX Runtime on the version's model.onnx wrapped by the service's own serving-graph builder
   (`service.graph.build_serving_model`), in a plain session. TorchServe (bench/peer_torchserve_handler.py) runs a
   TorchScript (``torch.jit.trace``) of the PyTorch module whose ONNX export that model is (`torch_network`: the
   version's training checkpoint, or the benchmark's random-init paper network rebuilt from the seed its metadata
   records); a version with neither is not served by TorchServe (said, and LitServe still runs).
2. **Each peer as its users write it.** Decoding and cropping are the peer's own: Pillow and numpy in LitServe's
   `decode_request`, Pillow and torchvision's ``Resize`` / ``CenterCrop`` / ``TenCrop`` in TorchServe's handler,
   never the service's service/preprocess.py (that would make a peer the service in disguise). The crops are the
   paper's: the shorter side to the resize size, the central square, its four corners and centre and their mirror
   images (or the centre crop); the softmax averaged over them; the top 5.
3. **Same resources and batching.** One worker each; ONNX Runtime's intra-op threads (LitServe) and PyTorch's
   threads (TorchServe) = the service's intra-op threads (``ALEXNET_INTRA_OP_THREADS``; 0 = one per physical core,
   as ONNX Runtime picks), LitServe also with the service's spinning setting; the peer's own dynamic batching with
   the service's batch cap in images (``ALEXNET_MAX_BATCH_PATCHES`` ÷ patches per image: 8 ten-crop images or 80
   centre crops, which is why a peer is started once per crops mode) and the service's batch delay
   (``ALEXNET_MAX_BATCH_DELAY_MS``), but at least 1 ms (`MIN_BATCH_DELAY_MS`): at 0 LitServe's batched loop spins
   on its queue and TorchServe's aggregator stops at the second queued request; ``--peer-batch-delay-ms`` sets it.
   Everything on 127.0.0.1; TorchServe's system-metrics collector (a Python process every minute) is off.
4. **Same load.** bench/loadgen.py drives every server, closed loop, the same images, the same levels, with the
   request each peer's users send: ``--protocol litserve`` (multipart, field ``file``, to ``POST /predict``),
   ``--protocol torchserve`` (the raw bytes to ``POST /predictions/alexnet``).
5. **Checked before timed.** Once per peer and crops mode, before any timing, the peer's top 5 on a sample image
   (one the service decodes in full, without JPEG draft scaling, so both see the same pixels) must be the
   service's top 5 (the same classes); a peer that answers differently is refused (printed with both answers)
   and not timed.
6. **Side by side, each alone.** Before each peer level the service is measured at the same level again, so
   service ÷ peer compares numbers taken minutes apart at most, on a machine whose load drifts. While one is
   measured the other is paused (SIGSTOP to its process group, SIGCONT after; `paused`), and so are the
   benchmark's other servers: an idle server is not free. The first quiet run, without the pause, measured the
   service at 8.2 images/s beside an idle LitServe against 11.3 in its own sweep minutes earlier.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexnet_store import ModelVersion
from alexnet_store.vocabulary import IMAGE_SUFFIXES, PATCHES_PER_SCHEME
from bench import report
from bench.loadgen import encode_request

if TYPE_CHECKING:  # bench/benchmark.py imports this module: its helpers are imported where they are used
    from bench.benchmark import Endpoint, Plan

PEERS = ("litserve", "torchserve")
LABELS = {"litserve": "LitServe", "torchserve": "TorchServe"}
MIN_BATCH_DELAY_MS = 1.0
TORCHSERVE_MODEL = "alexnet"
HANDLER = Path(__file__).with_name("peer_torchserve_handler.py")


class PeerError(RuntimeError):
    """A peer that cannot be started here, or that answers differently from the service."""


# -- what each peer is given --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerConfig:
    crops: str  # the one crop scheme this peer instance serves
    max_batch_images: int  # the service's batch cap, in images of this scheme
    batch_delay_ms: float
    threads: int  # ONNX Runtime intra-op threads (LitServe), torch threads (TorchServe)
    spinning: bool  # ONNX Runtime's idle threads spin (LitServe)

    @classmethod
    def from_settings(cls, settings, crops: str, batch_delay_ms: float | None = None) -> PeerConfig:
        """The service's own settings (`service.settings.Settings`), as the peer's knobs."""
        from service.session import physical_cores

        threads = settings.effective_intra_op_threads() or physical_cores()  # 0: ORT's own choice, one per core
        delay = max(MIN_BATCH_DELAY_MS, settings.max_batch_delay_ms) if batch_delay_ms is None else batch_delay_ms
        return cls(crops=crops, max_batch_images=max(1, settings.max_batch_patches // PATCHES_PER_SCHEME[crops]),
                   batch_delay_ms=delay, threads=threads, spinning=settings.intra_op_spinning)


def parse_peers(text: str) -> list[str]:
    names = [x.strip().lower() for x in text.split(",") if x.strip()]
    unknown = sorted(set(names) - set(PEERS))
    if not names or unknown:
        raise ValueError(f"peers are {' and/or '.join(PEERS)}, got {text!r}")
    return list(dict.fromkeys(names))


def java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def executable(name: str) -> str | None:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def missing(peer: str) -> str | None:
    """Why `peer` cannot run here (None: it can)."""
    extra = "install the peers extra: pip install -e '.[peers]'"
    if peer == "litserve":
        return None if importlib.util.find_spec("litserve") else f"litserve is not installed ({extra})"
    if importlib.util.find_spec("ts") is None or executable("torchserve") is None:
        return f"torchserve is not installed ({extra})"
    if executable("torch-model-archiver") is None:
        return f"torch-model-archiver is not installed ({extra})"
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        return "TorchServe's handler needs torch and torchvision (the train extra)"
    if java() is None:
        return "TorchServe needs Java 11 or later (java on PATH, or JAVA_HOME)"
    return None


# -- processes --------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def paused(pids: Sequence[int]) -> Iterator[None]:
    """The servers with these pids, and everything of their process groups (LitServe's worker, TorchServe's Java
    frontend and Python worker), take no CPU meanwhile: SIGSTOP, then SIGCONT however the body ends. Their
    listening sockets stay open and their state is kept; a stopped server only answers later. Never this
    process's own group."""
    groups = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if group != os.getpgrp() and group not in groups:
                groups.append(group)
    stopped = []
    try:
        for pgid in groups:
            _killpg(pgid, signal.SIGSTOP)
            stopped.append(pgid)
        yield
    finally:
        for pgid in stopped:
            _killpg(pgid, signal.SIGCONT)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path) -> str:
    from bench.benchmark import _tail

    return _tail(path)


def _free_ports(n: int) -> list[int]:
    """`n` different free loopback ports."""
    from bench.benchmark import free_port

    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _endpoint(url: str, pid: int) -> Endpoint:
    from bench.benchmark import Endpoint

    return Endpoint(url, pid)


def _wait_ready(probe: Callable[[], bool], alive: Callable[[], bool], what: str, log_path: Path,
                timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise PeerError(f"{what} exited before it was ready:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise PeerError(f"{what} not ready after {timeout:.0f} s:\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            if probe():
                return
        time.sleep(0.25)


def _stop_group(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to the process's group (LitServe's API server and worker are its children), then SIGKILL."""
    if process.poll() is None:
        _killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            _killpg(process.pid, signal.SIGKILL)
            process.wait()
    deadline = time.monotonic() + 10
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _killpg(process.pid, signal.SIGKILL)  # anything of the group still there


# -- LitServe -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def litserve_server(version: ModelVersion, config: PeerConfig, workdir: Path,
                    timeout: float = 300) -> Iterator[Endpoint]:
    """bench/peer_litserve.py on `version`, serving `config.crops`; always stopped (its whole process group)."""
    import httpx

    (port,) = _free_ports(1)
    command = [sys.executable, "-m", "bench.peer_litserve", "--model-store", str(version.path.parent.parent),
               "--model-name", version.name, "--model-version", str(version.version), "--crops", config.crops,
               "--host", "127.0.0.1", "--port", str(port), "--threads", str(config.threads),
               "--max-batch-size", str(config.max_batch_images), "--batch-timeout-ms", str(config.batch_delay_ms)]
    command += ["--spinning"] if config.spinning else []
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / f"litserve-{config.crops}.log"
    environment = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with open(log_path, "w") as fh:
        process = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=environment,
                                   start_new_session=True)
    try:
        _wait_ready(lambda: httpx.get(url + "/health", timeout=5).status_code == 200,
                    lambda: process.poll() is None, "LitServe", log_path, timeout)
        yield _endpoint(url, process.pid)
    finally:
        _stop_group(process)


# -- TorchServe ---------------------------------------------------------------------------------------------
def torch_network(version: ModelVersion):
    """The PyTorch module whose ONNX export `version` is: its training checkpoint when the metadata names one that
    exists, else the benchmark's random-init paper network (bench/references.py `random_network`) rebuilt from the
    seed and init the metadata records. The check against the service's answer (`check_peer`) confirms it."""
    meta = version.metadata
    source = meta.source or {}
    checkpoint = source.get("checkpoint")
    if checkpoint and Path(checkpoint).is_file():
        from training.checkpoint import load_checkpoint, model_from_checkpoint

        return model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    paper = meta.architecture.name.startswith("alexnet-krizhevsky") and meta.architecture.grouped in (None, True)
    if source.get("random_init") and source.get("arch", "alexnet") == "alexnet" and paper \
            and meta.preprocessing.input_channels == 3:
        from bench.references import RANDOM_INIT, random_network

        return random_network(meta.num_classes, int(source.get("seed", 0)), source.get("init", RANDOM_INIT))
    raise PeerError(f"{version.path}: no PyTorch network for TorchServe (the metadata names no checkpoint that exists "
                    "here and it is not a random-init paper network)")


def script_network(version: ModelVersion, workdir: Path, network=None) -> Path:
    """``torch.jit.trace`` of `network` (default `torch_network(version)`: a caller holding the module, such as a
    test, passes it), saved as alexnet.pt (once per run: both crops modes use it)."""
    import warnings

    import torch

    pre = version.metadata.preprocessing
    if pre.input_channels != 3 or pre.channel_order != "RGB" or pre.pixel_range != "0-1":
        raise PeerError(f"{version.path}: the TorchServe handler feeds RGB pixels in [0, 1], normalised; this model "
                        "takes other input")
    model = torch_network(version) if network is None else network.eval()
    path = workdir / "torchserve-network" / "alexnet.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice: it is what TorchServe serves
        traced = torch.jit.trace(model, torch.zeros(1, 3, pre.crop_size, pre.crop_size))
        traced.save(str(path))
    return path


def torchserve_archive(version: ModelVersion, config: PeerConfig, scripted: Path, workdir: Path) -> Path:
    """alexnet.mar (torch-model-archiver, stored uncompressed) in a fresh model store; returns the store."""
    pre = version.metadata.preprocessing
    build = workdir / f"torchserve-{config.crops}-build"
    store = workdir / f"torchserve-{config.crops}-store"
    build.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    (build / "peer.json").write_text(json.dumps({
        "crops": config.crops, "threads": config.threads, "resize_size": pre.resize_size, "crop_size": pre.crop_size,
        "interpolation": pre.interpolation, "mean": list(pre.mean), "std": list(pre.std)}))
    (build / "model-config.yaml").write_text(
        f"minWorkers: 1\nmaxWorkers: 1\nbatchSize: {config.max_batch_images}\n"
        f"maxBatchDelay: {max(1, round(config.batch_delay_ms))}\nresponseTimeout: 600\n")
    command = [executable("torch-model-archiver"), "--model-name", TORCHSERVE_MODEL, "--version", "1.0",
               "--serialized-file", str(scripted), "--handler", str(HANDLER), "--extra-files", str(build / "peer.json"),
               "--config-file", str(build / "model-config.yaml"), "--export-path", str(store),
               "--archive-format", "zip-store", "--force"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise PeerError(f"torch-model-archiver failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return store


@contextlib.contextmanager
def torchserve_server(version: ModelVersion, config: PeerConfig, workdir: Path, scripted: Path,
                      timeout: float = 300) -> Iterator[Endpoint]:
    """``torchserve --start`` on alexnet.mar, every address on 127.0.0.1, its pid file, logs and unpacked archive in
    `workdir`; waits until its one worker is READY. Always stopped: ``torchserve --stop``, then whatever is left of
    its process group (the Java frontend and its Python worker) is killed, also on errors and Ctrl-C."""
    import httpx

    store = torchserve_archive(version, config, scripted, workdir)
    home = workdir / f"torchserve-{config.crops}"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    inference, management, metrics, grpc_inference, grpc_management = _free_ports(5)
    properties = home / "config.properties"
    properties.write_text("\n".join([
        f"inference_address=http://127.0.0.1:{inference}", f"management_address=http://127.0.0.1:{management}",
        f"metrics_address=http://127.0.0.1:{metrics}", "grpc_inference_address=127.0.0.1",
        f"grpc_inference_port={grpc_inference}", "grpc_management_address=127.0.0.1",
        f"grpc_management_port={grpc_management}", "disable_token_authorization=true",
        "disable_system_metrics=true", "default_workers_per_model=1", "default_response_timeout=600",
        f"model_store={store}", ""]))
    tmp = str(home / "tmp")
    # TorchServe keeps its pid file in tempfile.gettempdir() and unpacks archives in java.io.tmpdir (TEMP): both
    # private to this run, so it never meets (or stops) another TorchServe on this machine.
    env = {**{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}, "TMPDIR": tmp, "TEMP": tmp,
           "LOG_LOCATION": str(home / "logs"), "METRICS_LOCATION": str(home / "logs"),
           "OMP_NUM_THREADS": str(config.threads)}
    torchserve = executable("torchserve")
    log_path = home / "torchserve.log"
    url = f"http://127.0.0.1:{inference}"
    pgid = None
    try:
        with open(log_path, "w") as fh:
            launcher = subprocess.Popen(
                [torchserve, "--start", "--ncs", "--disable-token-auth", "--model-store", str(store), "--models",
                 f"{TORCHSERVE_MODEL}={TORCHSERVE_MODEL}.mar", "--ts-config", str(properties)],
                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=home, start_new_session=True)
        pgid = launcher.pid  # the Java frontend it starts, and that one's Python worker, stay in this group
        if launcher.wait(120) != 0:
            raise PeerError(f"torchserve --start exited with {launcher.returncode}:\n{_tail(log_path)}")
        pid_file = Path(tmp) / ".model_server.pid"
        java_pid = int(pid_file.read_text().split()[0]) if pid_file.is_file() else None
        if java_pid is None:
            raise PeerError(f"torchserve --start wrote no pid file:\n{_tail(log_path)}")

        def ready() -> bool:
            described = httpx.get(f"http://127.0.0.1:{management}/models/{TORCHSERVE_MODEL}", timeout=5)
            workers = described.json()[0]["workers"] if described.status_code == 200 else []
            return bool(workers) and all(w["status"] == "READY" for w in workers)

        _wait_ready(ready, lambda: _alive(java_pid), "TorchServe", log_path, timeout)
        described = httpx.get(f"http://127.0.0.1:{management}/models/{TORCHSERVE_MODEL}", timeout=5).json()[0]
        if (described["batchSize"], described["maxBatchDelay"]) != (config.max_batch_images,
                                                                    max(1, round(config.batch_delay_ms))):
            raise PeerError(f"TorchServe runs batchSize {described['batchSize']}, maxBatchDelay "
                            f"{described['maxBatchDelay']}: not the archive's model-config.yaml")
        yield _endpoint(url, java_pid)
    finally:
        _stop_torchserve(torchserve, env, home, pgid)


def _stop_torchserve(torchserve: str | None, env: dict[str, str], home: Path, pgid: int | None) -> None:
    try:
        if torchserve:
            subprocess.run([torchserve, "--stop"], env=env, cwd=home, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pass
    finally:
        if pgid is not None:
            deadline = time.monotonic() + 30
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            _killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def peer_server(peer: str, version: ModelVersion, config: PeerConfig, workdir: Path,
                scripted: Path | None = None) -> Iterator[Endpoint]:
    if peer == "litserve":
        with litserve_server(version, config, workdir) as endpoint:
            yield endpoint
    else:
        with torchserve_server(version, config, workdir, scripted or script_network(version, workdir)) as endpoint:
            yield endpoint


# -- the check ----------------------------------------------------------------------------------------------
def sample_image(images: Path, resize_size: int) -> tuple[str, bytes]:
    """The first image the service decodes in full (shorter side under twice the resize size: no JPEG draft
    scaling), so the service and a peer see the same pixels; else the first image."""
    from PIL import Image

    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PeerError(f"no images in {images}")
    for path in files:
        with contextlib.suppress(OSError), Image.open(path) as img:
            if min(img.size) < 2 * resize_size:
                return path.name, path.read_bytes()
    return files[0].name, files[0].read_bytes()


def ask(url: str, protocol: str, name: str, data: bytes, crops: str,
        timeout: float = 300) -> list[tuple[int, float]]:
    """The top 5 (index, probability) a server answers for one image, asked as the load generator asks."""
    import httpx

    path, params, body, headers = encode_request(protocol, name, data, crops)
    r = httpx.post(url + path, params=params, content=body, headers=headers, timeout=timeout)
    if r.status_code != 200:
        raise PeerError(f"{url}{path} answered {r.status_code}: {r.text[:500]}")
    answer = r.json()
    predictions = answer["results"][0]["predictions"] if protocol == "predict" else answer["predictions"]
    return [(int(p["index"]), float(p["probability"])) for p in predictions]


def compare(peer: str, crops: str, image: str, service: list[tuple[int, float]],
            answers: Sequence[list[tuple[int, float]]]) -> dict[str, Any]:
    """Whether every answer of the peer names the service's top-5 classes (in any order)."""
    expected = {i for i, _ in service}
    same = all({i for i, _ in a} == expected for a in answers)
    first = answers[0]
    theirs = dict(first)
    diff = max((abs(p - theirs[i]) for i, p in service if i in theirs), default=math.nan)
    out = {"peer": peer, "crops": crops, "image": image, "same": same, "same_order": [i for i, _ in first] ==
           [i for i, _ in service], "service_top5": service, "peer_top5": first, "max_abs_probability_diff": diff}
    if not same:
        out["why"] = (f"{LABELS[peer]} (crops={crops}) answers top-5 {[i for i, _ in first]} for {image}; the service "
                      f"answers {[i for i, _ in service]}: not the same model, refused")
    return out


def check_peer(peer: str, url: str, service_url: str, sample: tuple[str, bytes], crops: str,
               repeats: int = 3) -> dict[str, Any]:
    """The peer's top 5 on the sample image (asked `repeats` times: its first calls are also its warm-up) against
    the service's."""
    name, data = sample
    service = ask(service_url, "predict", name, data, crops)
    return compare(peer, crops, name, service, [ask(url, peer, name, data, crops) for _ in range(repeats)])


# -- in the benchmark ---------------------------------------------------------------------------------------
def measure(peers: Sequence[str], version: ModelVersion, settings, service_url: str, images: Path, plan: Plan,
            workdir: Path, log: Callable[[str], None], batch_delay_ms: float | None = None,
            level: Callable[..., dict[str, Any]] | None = None,
            service_pids: Sequence[int] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each peer alone, once per crops mode: start, check against the service, then every concurrency level, each
    right after the service's own at that level. `service_pids`: the process groups of the benchmark's own servers
    (the service and whatever else it started), paused while a peer is measured, as the peer is while the service
    is. Returns (what was done: configs, checks, refusals; the rows)."""
    if level is None:
        from bench.benchmark import load_level as level
    info: dict[str, Any] = {"peers": list(peers), "configs": [], "checks": [], "refused": []}
    rows: list[dict[str, Any]] = []
    sample = sample_image(images, version.metadata.preprocessing.resize_size)
    scripted: Path | None = None
    for crops in plan.crops:
        config = PeerConfig.from_settings(settings, crops, batch_delay_ms)
        info["configs"].append(asdict(config))
        for peer in peers:
            label = LABELS[peer]
            log(f"{label} (crops={crops}, batch ≤ {config.max_batch_images} images, delay {config.batch_delay_ms} ms, "
                f"{config.threads} threads): starting ...")
            try:
                if peer == "torchserve" and scripted is None:
                    scripted = script_network(version, workdir)
                with peer_server(peer, version, config, workdir, scripted) as endpoint:
                    check = check_peer(peer, endpoint.url, service_url, sample, crops)
                    info["checks"].append(check)
                    if not check["same"]:
                        log(f"  {check['why']}")
                        info["refused"].append({"peer": peer, "crops": crops, "why": check["why"]})
                        continue
                    log(f"  {label}: top-5 on {check['image']} = the service's (max |Δp| "
                        f"{check['max_abs_probability_diff']:.1e})")
                    for concurrency in plan.concurrency:
                        with paused([endpoint.pid]):
                            beside = level(service_url, images, concurrency, crops, plan)
                        with paused(service_pids):
                            row = level(endpoint.url, images, concurrency, crops, plan, peer)
                        ratio = beside["images_per_s"] / row["images_per_s"] if row["images_per_s"] else math.nan
                        row.update(target=label, load_average=report.load(), service_x_peer=ratio,
                                   beside_service={k: beside[k] for k in ("images_per_s", "latency_ms", "errors",
                                                                          "requests", "window_s")})
                        rows.append(row)
                        log(f"  {label:>14} crops={crops:<6} c={concurrency:<3} {row['images_per_s']:7.2f} images/s  "
                            f"p99 {row['latency_ms']['p99']:7.0f} ms  errors {row['errors']}; service beside it "
                            f"{beside['images_per_s']:7.2f} images/s (÷ {label} {ratio:.2f})  "
                            f"(load {row['load_average']:.2f})")
            except (PeerError, RuntimeError, OSError) as exc:
                log(f"  {label} (crops={crops}) not measured: {exc}")
                info["refused"].append({"peer": peer, "crops": crops, "why": str(exc)})
    return info, rows


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """service ÷ peer at every level measured: throughput and p99, each pair taken back to back."""
    out = []
    for r in rows:
        if "beside_service" not in r:
            continue
        svc = r["beside_service"]
        out.append({"peer": r["target"], "crops": r["crops"], "concurrency": r["concurrency"],
                    "service_images_per_s": svc["images_per_s"], "peer_images_per_s": r["images_per_s"],
                    "service_x_peer": r["service_x_peer"], "service_p99_ms": svc["latency_ms"]["p99"],
                    "peer_p99_ms": r["latency_ms"]["p99"], "service_errors": svc["errors"], "peer_errors": r["errors"]})
    return out


def print_summary(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    peers = result.get("peers")
    if not peers:
        return
    out("")
    out("peers (docs/benchmark.md, \"Peers\"): each alone, the same load generator; service ÷ peer = the service's "
        "images/s measured just before the peer's at the same level")
    for c in peers["configs"]:
        out(f"  crops={c['crops']}: batch ≤ {c['max_batch_images']} images, delay {c['batch_delay_ms']} ms, "
            f"{c['threads']} threads, one worker")
    for check in peers["checks"]:
        if check["same"]:
            out(f"  {LABELS[check['peer']]} crops={check['crops']}: top-5 on {check['image']} = the service's "
                f"({'same order' if check['same_order'] else 'same classes'}, max |Δp| "
                f"{check['max_abs_probability_diff']:.1e})")
    for refused in peers["refused"]:
        out(f"  REFUSED {LABELS[refused['peer']]} crops={refused['crops']}: {refused['why']}")
    table = result["summary"].get("peers", [])
    if table:
        out(report.table([[r["peer"], r["crops"], r["concurrency"], r["service_images_per_s"], r["peer_images_per_s"],
                           r["service_x_peer"], r["service_p99_ms"], r["peer_p99_ms"],
                           f"{r['service_errors']}/{r['peer_errors']}"] for r in table],
                         ["peer", "crops", "conc", "service img/s", "peer img/s", "service ÷ peer", "service p99",
                          "peer p99", "errors s/p"]))
