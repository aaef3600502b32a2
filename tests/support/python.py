"""A fresh Python in which some packages cannot be imported, as on a machine that lacks them."""

from __future__ import annotations

import subprocess
import sys

from support.paths import REPO

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
