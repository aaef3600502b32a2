"""API keys: off unless ``ALEXNET_API_KEYS_FILE`` names a file of keys.

The file holds one key per line — the key itself, or ``sha256:<64 hex digits>`` of it so the file need not
hold the secret — optionally followed by its scope: ``infer`` (the default) or ``admin``, which may also load
and unload models (Triton's repository extension). Blank lines and ``#`` comments are ignored::

    # name: CI pipeline
    s3cr3t-key-for-ci
    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 admin

Clients send ``Authorization: Bearer <key>`` (``X-API-Key: <key>`` is accepted too). Every key is kept only
as its SHA-256 digest and an offered key is compared with every stored digest in constant time
(`hmac.compare_digest`, no early exit), so neither timing nor a memory dump gives a key away; keys are never
logged. A missing or wrong key is 401 with ``WWW-Authenticate: Bearer``; an ``infer`` key on an admin route
is 403.

What needs a key: every route but the health probes (and the browser page), which orchestrators call
without credentials. ``/metrics`` needs one unless ``ALEXNET_METRICS_REQUIRE_KEY=false``; ``/docs`` and
``/openapi.json`` need one only with ``ALEXNET_DOCS_REQUIRE_KEY=true``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Scope = Literal["infer", "admin"]
SCOPES: tuple[Scope, ...] = ("infer", "admin")  # each includes the ones before it
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the line (never the key)."""


@dataclass(frozen=True)
class ApiKeys:
    digests: tuple[tuple[bytes, Scope], ...]

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeysFileError(f"cannot read the API keys file {path}: {exc}") from exc
        keys: list[tuple[bytes, Scope]] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) > 2:
                raise KeysFileError(f"API keys file line {number}: expected 'KEY [infer|admin]' (keys have no spaces)")
            key, scope = parts[0], parts[1] if len(parts) == 2 else "infer"
            if scope not in SCOPES:
                raise KeysFileError(f"API keys file line {number}: unknown scope {scope!r} (use infer or admin)")
            hashed = _HASHED.match(key)
            if key.startswith("sha256:") and not hashed:
                raise KeysFileError(f"API keys file line {number}: 'sha256:' must be followed by 64 hex digits")
            digest = bytes.fromhex(hashed.group(1)) if hashed else hashlib.sha256(key.encode()).digest()
            keys.append((digest, scope))
        if not keys:
            raise KeysFileError(f"the API keys file {path} holds no keys")
        return cls(tuple(keys))

    def scope_of(self, key: str) -> Scope | None:
        """The scope of a valid key, None otherwise; every stored digest is compared, matched or not."""
        offered = hashlib.sha256(key.encode()).digest()
        found: Scope | None = None
        for digest, scope in self.digests:
            if hmac.compare_digest(offered, digest) and (found is None or SCOPES.index(scope) > SCOPES.index(found)):
                found = scope
        return found

    @staticmethod
    def allows(granted: Scope, needed: Scope) -> bool:
        return SCOPES.index(granted) >= SCOPES.index(needed)
