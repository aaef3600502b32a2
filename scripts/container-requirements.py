"""Print the pip requirements of the project's extras, read from pyproject.toml.

The Dockerfile installs these before it copies any code, so the (large) dependency layer is rebuilt only
when the dependencies change, not on every code change:

    python container-requirements.py --pyproject pyproject.toml serve gpu     # GPU-capable serving image
    python container-requirements.py --pyproject pyproject.toml --cpu serve   # CPU-only serving image
    python container-requirements.py --pyproject pyproject.toml train gpu     # training image

`--cpu` swaps `onnxruntime-gpu` for the plain `onnxruntime` wheel of the same version and refuses the
`gpu` extra (the CUDA/cuDNN libraries are useless without onnxruntime-gpu). Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_ORT_GPU = re.compile(r"^onnxruntime-gpu(\[[^\]]*\])?(?=[\s=<>!~;]|$)", re.IGNORECASE)


def requirements(pyproject: dict, extras: list[str], cpu: bool = False) -> list[str]:
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
    if cpu and "gpu" in extras:
        raise SystemExit("--cpu cannot be combined with the gpu extra")
    lines: list[str] = []
    for req in [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]:
        req = req.strip()
        if cpu:
            req = _ORT_GPU.sub("onnxruntime", req)
        if req not in lines:
            lines.append(req)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("extras", nargs="+", help="extras of the project to install (e.g. serve gpu)")
    p.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    p.add_argument("--cpu", action="store_true", help="plain onnxruntime instead of onnxruntime-gpu")
    args = p.parse_args(argv)
    with args.pyproject.open("rb") as f:
        data = tomllib.load(f)
    sys.stdout.write("".join(f"{line}\n" for line in requirements(data, args.extras, args.cpu)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
