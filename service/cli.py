"""`alexnet-serve`: check the model store, then run the service under uvicorn.

Settings come from ``ALEXNET_*`` environment variables (service/settings.py); the flags below override
them. Before uvicorn starts, the store is checked (it exists, holds the models asked for) and the execution
providers are validated, so a missing store or a typo is a one-line error and exit status 2, not a
traceback. Each worker's model repository then loads the versions its policy selects and follows the store
(service/repository.py).

With ``--workers N`` > 1, each worker is a process with its own ONNX Runtime session (and, unless
``--intra-op-threads`` is given, cores ÷ N ORT threads); Prometheus metrics are aggregated over the
workers through a multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``; a temporary one unless set).

Deprecated flags of the versions before the model repository are still taken, each with a warning on stderr:
``--model-name NAME`` is ``--models NAME`` and ``--model-version N`` is ``--version-policy NAME=specific:N``
(plain ``specific:N`` when no single model is named); given with the flag it aliases, the two must agree
(exit status 2 otherwise). `service.settings.aliases` maps them, and ALEXNET_MODEL_NAME/_VERSION the same way.
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
from pydantic_settings import SettingsError

from alexnet_store import ModelStore
from service.auth import ApiKeys, KeysFileError
from service.settings import DEPRECATED, ENV_PREFIX, LogLevel, Settings, aliases, warn_deprecated

PROG = "alexnet-serve"
HINT = "run `make demo` or alexnet-export"


class CliError(Exception):
    pass


# The settings alexnet-serve takes as flags; every other one is an ALEXNET_* variable (docs/api.md). Help texts
# and defaults come from the settings' own fields, so they are written once.
FLAGS = ("model_store", "models", "version_policy", "repository_poll_seconds", "host", "port", "workers",
         "providers", "intra_op_threads", "api_keys_file", "log_level", "log_format")


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list):
        return ",".join(value) or "empty"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve the models of a model store over HTTP: POST /predict, the Open Inference Protocol "
                    "(/v2, as KServe and Triton clients speak it), /health/*, /v1/models, /metrics, /docs. Every "
                    f"setting can also be given as an {ENV_PREFIX}* environment variable (see docs/api.md); flags "
                    "override the environment.",
    )
    for name in FLAGS:
        field = Settings.model_fields[name]
        kwargs: dict = {"help": f"{field.description or name.replace('_', ' ')} "
                                f"(env {ENV_PREFIX}{name.upper()}; default {_default(name)})"}
        if name == "log_level":
            kwargs["choices"] = list(LogLevel.__args__)
        elif name == "log_format":
            kwargs["choices"] = ["text", "json"]
        elif field.annotation in (int, float):
            kwargs["type"] = field.annotation
        elif name in ("model_store", "api_keys_file"):
            kwargs["type"] = Path
        p.add_argument("--" + name.replace("_", "-"), **kwargs)
    old = p.add_argument_group("deprecated (the flags before the model repository; each use warns)")
    old.add_argument("--model-name", metavar="NAME", help="deprecated: use --models NAME")
    old.add_argument("--model-version", metavar="N", type=int,
                     help="deprecated: use --version-policy NAME=specific:N (NAME the one model served)")
    return p


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {name: value for name, value in vars(args).items() if value is not None and name not in DEPRECATED}
    try:
        if any(getattr(args, name, None) is not None for name in DEPRECATED):
            mapped, notes = aliases(getattr(args, "model_name", None), getattr(args, "model_version", None),
                                    overrides.get("models"), overrides.get("version_policy"), _flag)
            warn_deprecated(notes)
            overrides.update(mapped)
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid settings: {problems}") from exc
    except SettingsError as exc:
        raise CliError(f"invalid settings: {exc}") from exc
    try:
        settings.check_instances()
    except ValueError as exc:
        raise CliError(f"invalid settings: {exc}") from exc
    return settings


def check_store(settings: Settings) -> list[str]:
    """The models to serve, checked before uvicorn starts; CliError with a one-line message otherwise.

    Versions are parsed, verified and loaded by the repository in each worker (a version that fails there is
    reported and skipped; a model with no loadable version makes the worker exit with status 3)."""
    root = settings.model_store
    store = ModelStore(root)
    if not root.exists():
        raise CliError(f"model store {root} does not exist — {HINT}")
    if not root.is_dir():
        raise CliError(f"model store {root} is not a directory")
    names = store.names()
    if not names:
        raise CliError(f"model store {root} holds no models — {HINT}")
    missing = [name for name in settings.models if name not in names]
    if missing:
        raise CliError(f"model store {root} has no model named {', '.join(map(repr, missing))} "
                       f"(models there: {', '.join(names)})")
    if settings.api_keys_file is not None:
        try:
            ApiKeys.load(settings.api_keys_file)
        except KeysFileError as exc:
            raise CliError(str(exc)) from exc
    from service.model import resolve_providers  # imports onnxruntime: only once the store looks right

    try:
        resolve_providers(settings.provider_request)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    return list(settings.models) or names


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
        names = check_store(settings)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"exit_on_load_failure": True})
    for name in DEPRECATED:  # read and warned about once, here: the workers get what they mapped to
        for key in [k for k in os.environ if k.upper() == f"{ENV_PREFIX}{name.upper()}"]:
            del os.environ[key]
    os.environ.update(settings.to_env())  # uvicorn's workers (and the factory) read the same settings
    made_dir = _multiprocess_dir(settings.workers)
    poll = f"every {settings.repository_poll_seconds:g} s" if settings.repository_poll_seconds else "off"
    auth = f"API keys from {settings.api_keys_file}" if settings.api_keys_file else "no authentication"
    banner = (f"serving {', '.join(names)} from {settings.model_store} (versions: {settings.version_policy}; "
              f"polling {poll}) on http://{settings.host}:{settings.port} with {settings.workers} worker(s), "
              f"providers {','.join(settings.providers)}, {auth}")
    from service.logs import JsonFormatter, uvicorn_log_config

    if settings.log_format == "json":  # every line JSON, this one too
        import logging

        banner = JsonFormatter().format(logging.LogRecord(PROG, logging.INFO, __file__, 0, banner, None, None))
        print(banner, file=sys.stderr, flush=True)
    else:
        print(f"{PROG}: {banner}", file=sys.stderr, flush=True)

    import uvicorn

    try:
        # uvicorn's access log is replaced by the service's request line (service/logs.py, ALEXNET_ACCESS_LOG)
        uvicorn.run(
            "service.app:create_app", factory=True, host=settings.host, port=settings.port,
            workers=settings.workers, log_level=settings.log_level, access_log=False,
            log_config=uvicorn_log_config(settings.log_format) or uvicorn.config.LOGGING_CONFIG,
            timeout_graceful_shutdown=settings.drain_seconds,
        )
    finally:
        if made_dir:
            shutil.rmtree(made_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
