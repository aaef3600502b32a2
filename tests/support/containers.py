"""Readers of the container files: Dockerfile stages and instructions, compose YAML and environments."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from support.paths import REPO

DOCKERFILE = REPO / "Dockerfile"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


@functools.cache
def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, list[tuple[str, str]]]:
    """Stage name → its instructions (FROM first); in file order."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for ins, args in dockerfile_instructions(path.read_text()):
        if ins == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert m and m.group(2), f"every stage is named: FROM {args}"
            current = stages.setdefault(m.group(2), [])
        if current is not None:
            current.append((ins, args))
    return stages


def stage_args(stage: str, instruction: str, path: Path = DOCKERFILE) -> list[str]:
    return [a for i, a in dockerfile_stages(path)[stage] if i == instruction]


@functools.cache
def compose_yaml(path: Path) -> dict:
    """A compose file, read by a SafeLoader that also knows compose's `!reset` (as ("!reset", value))."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: ("!reset", loader.construct_sequence(node)
                                                           if isinstance(node, yaml.SequenceNode) else None))
    with path.open() as f:
        return yaml.load(f, Loader=Loader)


def compose_env(service: dict) -> dict[str, str | None]:
    """A compose service's environment as a dict (None: passed through from the shell when set)."""
    env = service.get("environment", {})
    if isinstance(env, dict):
        return {k: None if v is None else str(v) for k, v in env.items()}
    return {k: (v if sep else None) for k, sep, v in (e.partition("=") for e in env)}
