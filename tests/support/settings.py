"""The one way tests build service settings: CPU only, no .env file, quiet, no background store polling."""

from __future__ import annotations

from pathlib import Path


def cpu_settings(root: Path, **overrides):
    """`Settings` serving the store at `root` on ONNX Runtime's CPU provider; `overrides` are Settings fields."""
    from service.settings import Settings

    base = {"model_store": root, "providers": ["CPUExecutionProvider"], "log_level": "warning",
            "repository_poll_seconds": 0}
    return Settings(_env_file=None, **{**base, **overrides})
