"""The package map: `alexnet_store` imports no other package of the project; `training/` and `service/` import
only the store (never each other, never `bench/`, the layer above them); checked on every import statement,
including the lazy ones inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECT = {"alexnet_store", "training", "service", "bench"}
ALLOWED = {"alexnet_store": {"alexnet_store"}, "training": {"alexnet_store", "training"},
           "service": {"alexnet_store", "service"}}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_library_imports_another_sideways(package):
    wrong = {str(p.relative_to(REPO)): sorted(imported_packages(p) - ALLOWED[package])
             for p in sorted((REPO / package).rglob("*.py"))}
    assert not {k: v for k, v in wrong.items() if v}


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from bench.report import interleave\n    import service.app\n")
    assert imported_packages(module) == {"bench", "service"}
