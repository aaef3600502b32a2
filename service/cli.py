"""`alexnet-serve`: check the model store, then run the service under uvicorn.

Settings come from ``ALEXNET_*`` environment variables (service/settings.py); the flags below override
them. Before uvicorn starts, the model to serve is resolved and its checksum verified, so a missing or
broken store is a one-line error and exit status 2, not a traceback. The resolved name and version are
then pinned for every worker, so all workers serve the same version even if a new one is exported while
they start.

With ``--workers N`` > 1, each worker is a process with its own ONNX Runtime session (and, unless
``--intra-op-threads`` is given, cores ÷ N ORT threads); Prometheus metrics are aggregated over the
workers through a multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``; a temporary one unless set).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from alexnet_store import ModelStore, ModelVersion, StoreError
from service.settings import ENV_PREFIX, Settings

PROG = "alexnet-serve"
HINT = "run `make demo` or alexnet-export"


class CliError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve an AlexNet from the model store over HTTP (POST /predict, /health/*, /v1/models, "
                    f"/metrics, /docs). Every setting can also be given as an {ENV_PREFIX}* environment "
                    "variable (see docs/api.md); flags override the environment.",
    )
    p.add_argument("--model-store", type=Path, help="model store root (env ALEXNET_MODEL_STORE; default model_store)")
    p.add_argument("--model-name", help="model to serve (env ALEXNET_MODEL_NAME; default: the only one in the store)")
    p.add_argument("--model-version", type=int, help="version (env ALEXNET_MODEL_VERSION; default: the newest)")
    p.add_argument("--host", help="interface to listen on (env ALEXNET_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (env ALEXNET_PORT; default 8000; 0 = any free port)")
    p.add_argument("--workers", type=int, help="worker processes (env ALEXNET_WORKERS; default 1)")
    p.add_argument("--providers",
                   help="ONNX Runtime execution providers, comma-separated, or 'auto' = CUDA first when "
                        "available, then CPU (env ALEXNET_PROVIDERS; default auto)")
    p.add_argument("--intra-op-threads", type=int,
                   help="ONNX Runtime threads per worker (env ALEXNET_INTRA_OP_THREADS; default 0 = automatic)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug", "trace"],
                   help="log level (env ALEXNET_LOG_LEVEL; default info)")
    return p


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid settings: {problems}") from exc


def check_model(settings: Settings) -> ModelVersion:
    """Resolve the model to serve and verify its files; CliError with a one-line message otherwise."""
    root = settings.model_store
    store = ModelStore(root)
    if not root.exists():
        raise CliError(f"model store {root} does not exist — {HINT}")
    if not root.is_dir():
        raise CliError(f"model store {root} is not a directory")
    if settings.model_name is None and store.is_empty():
        raise CliError(f"model store {root} holds no models — {HINT}")
    try:
        version = store.resolve(settings.model_name, settings.model_version)
        version.verify()
    except StoreError as exc:
        raise CliError(f"{exc}" + (f" — {HINT}" if store.is_empty() else "")) from exc
    from service.model import resolve_providers  # imports onnxruntime: only once the store looks right

    try:
        resolve_providers(settings.provider_request)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    return version


def _multiprocess_dir(workers: int) -> str | None:
    """With several workers, give prometheus-client an empty directory to share (returns one we made)."""
    if workers <= 1:
        return None
    existing = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if existing:
        Path(existing).mkdir(parents=True, exist_ok=True)
        for stale in Path(existing).glob("*.db"):  # counters of an earlier run would be added to ours
            stale.unlink()
        return None
    made = tempfile.mkdtemp(prefix="alexnet-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
        version = check_model(settings)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={
        "model_name": version.name, "model_version": version.version, "exit_on_load_failure": True})
    os.environ.update(settings.to_env())  # uvicorn's workers (and the factory) read the same settings
    made_dir = _multiprocess_dir(settings.workers)
    print(f"{PROG}: serving {version.name} v{version.version} ({version.path}) on "
          f"http://{settings.host}:{settings.port} with {settings.workers} worker(s), providers "
          f"{','.join(settings.providers)}", file=sys.stderr, flush=True)

    import uvicorn

    try:
        uvicorn.run(
            "service.app:create_app", factory=True, host=settings.host, port=settings.port,
            workers=settings.workers, log_level=settings.log_level, access_log=settings.access_log,
            timeout_graceful_shutdown=30,
        )
    finally:
        if made_dir:
            shutil.rmtree(made_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
