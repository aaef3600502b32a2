"""Deprecated: the replicas tool moved to `bench/replicas.py` (run it as ``python -m bench.replicas``).

``python scripts/replicas.py ...`` keeps working, with a warning."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print("scripts/replicas.py: warning: deprecated; use `python -m bench.replicas`", file=sys.stderr)
    runpy.run_module("bench.replicas", run_name="__main__", alter_sys=True)
