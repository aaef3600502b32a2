"""The server's name and version, as `/docs` and the Open Inference Protocol's ``GET /v2`` report them."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

SERVER_NAME = "alexnet-serving"

try:
    VERSION = version(SERVER_NAME)
except PackageNotFoundError:  # run from a source tree that was never installed (the GPU machine)
    VERSION = "0+source"
