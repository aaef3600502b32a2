"""Traffic control between the loaded versions of a model: a weighted split, sticky keys, and shadow copies.

Per model, a `Rule`:

- **split**: weights over versions (``3:90,4:10``: nine requests in ten to v3, one to v4). A request that names
  its version (``/v2/models/m/versions/4/infer``, ``/predict?version=4``) bypasses it; one that does not is
  routed by it. Weights are relative (``1:1,2:1`` is 50/50). A version of the split that is not loaded (not yet,
  or retired by a rollover) takes nothing: its share goes to the split's loaded versions in proportion, and
  when none of them is loaded the model's default version (its newest) answers, as without a split.
- **sticky**: each request falls at a point of [0, 1) hashed from a key, and the split's versions own
  consecutive intervals of it, in version order. The key is the sticky header's value
  (``ALEXNET_TRAFFIC_STICKY_HEADER``, e.g. a user id) when the request carries it, else its request id. A
  sticky key so lands on the same version for as long as the weights stay (and moving weight from one version
  to its neighbour moves only the keys in between); a request id is random, so requests without the header
  spread by the weights, and any request's routing can be recomputed from its logged id.
- **shadow**: versions that receive a copy of a share of the model's routed traffic (``5:25``: a quarter of the
  requests is also run on v5). The copy's answer is discarded after it is compared with the primary's (top-1
  agreement); it never reaches the client, and its failures never fail the request (service/shadow.py). The
  share is hashed from the request id, independently of the split.

``ALEXNET_TRAFFIC="alexnet=3:90,4:10; digits=1:50,2:50"`` and ``ALEXNET_SHADOW="alexnet=5:25"`` set the rules
at start; ``POST /v2/repository/models/{name}/traffic`` (an admin key) replaces a model's rule at runtime.
Standard library only: the settings validate the text without importing the serving stack.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from alexnet_store.store import NAME_PATTERN

Weights = tuple[tuple[int, float], ...]  # (version, weight or share), by version


def bucket(*parts: str) -> float:
    """A point of [0, 1) that depends only on `parts` (BLAKE2b: the same in every process and on every machine)."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def _weights(items: Mapping[int, float] | Collection[tuple[int, float]], what: str, *, share: bool) -> Weights:
    pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
    seen: dict[int, float] = {}
    for version, weight in pairs:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{what}: version {version!r} is not a version number (1, 2, ...)")
        if version in seen:
            raise ValueError(f"{what}: version {version} is given twice")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ValueError(f"{what}: the {'share' if share else 'weight'} of version {version} must be a number, "
                             f"not {weight!r}")
        if share and not 0 < weight <= 100:
            raise ValueError(f"{what}: the share of version {version} must be a percentage above 0 and at most "
                             f"100, not {weight:g}")
        if not share and weight < 0:
            raise ValueError(f"{what}: the weight of version {version} must not be negative ({weight:g})")
        seen[version] = float(weight)
    if not share and seen and sum(seen.values()) <= 0:
        raise ValueError(f"{what}: at least one weight must be above 0")
    if not math.isfinite(sum(seen.values())):
        raise ValueError(f"{what}: the weights are too large (their sum is not a finite number)")
    return tuple(sorted(seen.items()))


def parse_weights(text: str, what: str, *, share: bool = False) -> Weights:
    """``3:90,4:10`` → ((3, 90.0), (4, 10.0)); ValueError naming what is wrong."""
    pairs = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        version, sep, weight = item.partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append((int(version), float(weight)))
        except ValueError:
            raise ValueError(f"{what}: {item!r} is not VERSION:{'PERCENT' if share else 'WEIGHT'} "
                             f"(e.g. {'5:25' if share else '3:90,4:10'})") from None
    return _weights(pairs, what, share=share)


def parse_table(text: str, setting: str, *, share: bool = False) -> dict[str, Weights]:
    """``alexnet=3:90,4:10; digits=1:1,2:1`` → per model weights; ValueError naming the entry that is wrong."""
    table: dict[str, Weights] = {}
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        name, sep, weights = entry.partition("=")
        name = name.strip()
        if not sep or not NAME_PATTERN.match(name):
            raise ValueError(f"{setting}: {entry!r} is not MODEL={'VERSION:PERCENT' if share else 'VERSION:WEIGHT'},"
                             f"... (e.g. {'alexnet=5:25' if share else 'alexnet=3:90,4:10'})")
        if name in table:
            raise ValueError(f"{setting}: model {name!r} is given twice")
        table[name] = parse_weights(weights, f"{setting} {name}", share=share)
    return table


def format_weights(weights: Weights) -> str:
    return ",".join(f"{v}:{w:g}" for v, w in weights)


@dataclass(frozen=True)
class Rule:
    """One model's split and shadows (both empty: every request to the default version, no copies)."""

    split: Weights = ()
    shadow: Weights = ()

    @classmethod
    def of(cls, split: Mapping[int, float] | None, shadow: Mapping[int, float] | None, what: str) -> Rule:
        return cls(_weights(split or {}, f"{what} split", share=False),
                   _weights(shadow or {}, f"{what} shadow", share=True))

    @property
    def versions(self) -> set[int]:
        return {v for v, _ in self.split} | {v for v, _ in self.shadow}

    def effective(self, loaded: Collection[int]) -> dict[int, float]:
        """The split over the loaded versions, as fractions summing to 1 (empty: the default version answers)."""
        present = [(v, w) for v, w in self.split if v in loaded and w > 0]
        total = sum(w for _, w in present)
        return {v: w / total for v, w in present} if total > 0 else {}

    def choose(self, model: str, key: str, loaded: Collection[int]) -> int | None:
        """The split's version for `key` (see the module doc), None when no version of the split is loaded."""
        total = sum(w for _, w in self.split)
        if total <= 0:
            return None
        point, edge = bucket(model, key) * total, 0.0
        owner = next(v for v, w in reversed(self.split) if w > 0)  # the last interval, should rounding miss it
        for version, weight in self.split:
            edge += weight
            if point < edge and weight > 0:
                owner = version
                break
        if owner in loaded:
            return owner
        fallback = self.effective(loaded)  # its version is not loaded: the loaded ones share its keys by weight
        if not fallback:
            return None
        point, edge = bucket(model, "fallback", key), 0.0
        for version, fraction in fallback.items():
            edge += fraction
            if point < edge:
                return version
        return next(reversed(fallback))

    def shadows(self, model: str, request_id: str, primary: int) -> list[int]:
        """The shadow versions that get a copy of this request (never the version that answers it)."""
        return [v for v, share in self.shadow
                if v != primary and bucket(model, "shadow", str(v), request_id) < share / 100]

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"split": {str(v): w for v, w in self.split}, "shadow": {str(v): s for v, s in self.shadow}}


class Traffic:
    """The rules of every model (a model without one has the empty rule), changed at runtime by `set`."""

    def __init__(self, split: Mapping[str, Weights] | None = None, shadow: Mapping[str, Weights] | None = None
                 ) -> None:
        names = set(split or {}) | set(shadow or {})
        self.rules: dict[str, Rule] = {n: Rule((split or {}).get(n, ()), (shadow or {}).get(n, ())) for n in names}

    @classmethod
    def parse(cls, split: str, shadow: str) -> Traffic:
        return cls(parse_table(split, "ALEXNET_TRAFFIC"), parse_table(shadow, "ALEXNET_SHADOW", share=True))

    def rule(self, model: str) -> Rule:
        return self.rules.get(model, Rule())

    def set(self, model: str, rule: Rule) -> None:
        if rule.split or rule.shadow:
            self.rules[model] = rule
        else:
            self.rules.pop(model, None)
