"""Version policies (Triton's vocabulary): which versions of a model the repository serves.

    latest        the newest version (the default; `latest:1`)
    latest:N      the newest N versions
    all           every version in the store
    specific:1,3  exactly these versions (those that exist)

``ALEXNET_VERSION_POLICY`` holds one policy for every model, or per-model ones: ``latest:1; digits=all``.
Standard library only: the settings validate the text without importing the serving stack.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from alexnet_store.store import NAME_PATTERN


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's version policy: the newest `count` versions, all of them, or the listed ones."""

    kind: Literal["latest", "all", "specific"] = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    _SYNTAX = "'latest', 'latest:N', 'all' or 'specific:V1,V2,...'"

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, arg = text.strip().partition(":")
        kind, arg = kind.strip().lower(), arg.strip()
        try:
            if kind == "latest":
                count = int(arg) if arg else 1
                if count < 1:
                    raise ValueError
                return cls("latest", count=count)
            if kind == "all" and not arg:
                return cls("all")
            if kind == "specific":
                versions = tuple(sorted({int(v) for v in arg.split(",") if v.strip()}))
                if not versions or versions[0] < 1:
                    raise ValueError
                return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ValueError(f"invalid version policy {text.strip()!r}: use {cls._SYNTAX}")

    def select(self, available: Iterable[int]) -> set[int]:
        versions = sorted(available)
        if self.kind == "all":
            return set(versions)
        if self.kind == "specific":
            return set(versions) & set(self.versions)
        return set(versions[-self.count:])

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


@dataclass(frozen=True)
class Policies:
    """A default policy and per-model ones, from ``latest:1; digits=all; alexnet=specific:2,3``."""

    default: VersionPolicy = VersionPolicy()
    per_model: dict[str, VersionPolicy] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Policies:
        default, per_model = VersionPolicy(), {}
        for entry in (e.strip() for e in text.split(";")):
            if not entry:
                continue
            name, sep, policy = entry.partition("=")
            if sep:
                name = name.strip()
                if not NAME_PATTERN.match(name):
                    raise ValueError(f"invalid model name {name!r} in version policy {entry!r}")
                per_model[name] = VersionPolicy.parse(policy)
            else:
                default = VersionPolicy.parse(entry)
        return cls(default, per_model)

    def for_model(self, name: str) -> VersionPolicy:
        return self.per_model.get(name, self.default)
