"""API keys (service/auth.py): the keys file, and every route of the app with keys off and on.

The route list comes from the app itself, so a route added later without a decision about its key fails here.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import warnings

import pytest
from support.app import reuse
from support.settings import cpu_settings

from service.app import create_app
from service.auth import ApiKeys, KeysFileError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

INFER_KEY = "infer-key-3f9a1c"
ADMIN_KEY = "admin-key-77b2e0"
OPEN = {"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"}  # probes call without keys
PAGE = {"/", "/static/app.js"}  # the browser page: it asks for a key itself when the API answers 401
# (method, route) that need the admin scope: loading, unloading and changing a model's traffic (reading it is infer)
ADMIN = {("POST", f"/v2/repository/models/{{name}}/{action}") for action in ("load", "unload", "traffic")}
METRICS, DOCS = {"/metrics"}, {"/docs", "/openapi.json"}


def test_keys_file_formats_and_scopes(tmp_path):
    hashed = hashlib.sha256(b"hashed-secret").hexdigest()
    path = tmp_path / "keys"
    path.write_text(f"# a comment\n\nplain-key\nother-key infer\nsha256:{hashed.upper()} admin\n")
    keys = ApiKeys.load(path)
    assert [keys.scope_of(k) for k in ("plain-key", "other-key", "hashed-secret", "nope", "")] == [
        "infer", "infer", "admin", None, None]
    assert ApiKeys.allows("admin", "infer") and not ApiKeys.allows("infer", "admin")


@pytest.mark.parametrize(("text", "message"), [
    ("", "holds no keys"), ("# only a comment\n", "holds no keys"),
    ("good\nsecret-key root\n", "line 2: unknown scope 'root'"),
    ("sha256:abc admin\n", "line 1: 'sha256:' must be followed by 64 hex digits"),
    ("two words here\n", "line 1: expected 'KEY [infer|admin]'"),
])
def test_bad_keys_files_are_refused_naming_the_line_not_the_key(tmp_path, text, message):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(KeysFileError, match=re.escape(message)) as info:
        ApiKeys.load(path)
    assert "secret-key" not in str(info.value)
    with pytest.raises(KeysFileError, match="cannot read the API keys file"):
        ApiKeys.load(tmp_path / "missing")


def concrete(path: str) -> str:
    return path.replace("{model}", "testnet").replace("{name}", "testnet").replace("{version}", "1")


def routes(app) -> list[tuple[str, str, str]]:
    """(method, concrete path, template) for every route the app documents, and the docs routes themselves."""
    out = [(method.upper(), concrete(path), path) for path, item in app.openapi()["paths"].items()
           for method in item]
    return out + [("GET", path, path) for path in sorted(DOCS | PAGE)]


def client_for(exported, loaded_model, tmp_path, **settings) -> TestClient:
    """The app with the two keys on (unless `settings` says otherwise), serving the session's loaded model
    (support.app.reuse): every (re)load, the admin key's POST .../load included, hands out that session."""
    root, _, _ = exported
    keys = tmp_path / "keys"
    keys.write_text(f"{INFER_KEY}\nsha256:{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()} admin\n")
    s = cpu_settings(root, log_level="info", **({"api_keys_file": keys} | settings))  # info: the auth log lines
    return TestClient(create_app(s, loader=reuse(loaded_model)))


def wait_ready(c: TestClient) -> None:
    deadline = time.monotonic() + 60
    while c.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def call(c: TestClient, method: str, path: str, headers: dict | None = None):
    return c.request(method, path, headers=headers or {})


def test_every_route_with_keys_on(exported, loaded_model, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with client_for(exported, loaded_model, tmp_path) as c:
        wait_ready(c)
        table = routes(c.app)
        assert {t for _, _, t in table} >= OPEN | {t for _, t in ADMIN} | METRICS | DOCS | {"/predict",
                                                                                  "/v2/models/{model}/infer"}
        assert {(m, t) for m, _, t in table} >= ADMIN
        for method, path, template in table:
            anonymous = call(c, method, path)
            if template in OPEN | DOCS | PAGE:  # the docs are open unless ALEXNET_DOCS_REQUIRE_KEY (see below)
                assert anonymous.status_code not in (401, 403), (method, path)
                continue
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            body = anonymous.json()
            assert ("this route needs an API key" in body.get("detail", "")
                    or "this route needs an API key" in body.get("error", "")), body
            wrong = call(c, method, path, {"Authorization": "Bearer not-a-key"})
            assert wrong.status_code == 401 and "not valid" in wrong.text
            assert call(c, method, path, {"Authorization": f"Basic {INFER_KEY}"}).status_code == 401
            infer = call(c, method, path, {"Authorization": f"Bearer {INFER_KEY}"})
            if (method, template) in ADMIN:
                assert infer.status_code == 403 and "needs an admin key" in infer.text, (method, path)
            else:
                assert infer.status_code not in (401, 403), (method, path, infer.text)
                assert call(c, method, path, {"X-API-Key": INFER_KEY}).status_code not in (401, 403)
            admin = call(c, method, path, {"Authorization": f"Bearer {ADMIN_KEY}"})
            assert admin.status_code not in (401, 403), (method, path, admin.text)
        r = c.post("/v2/repository/models/testnet/load", headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code == 200
        r = c.post("/predict", headers={"Authorization": f"Bearer {INFER_KEY}"},
                   files={"file": ("a.jpg", (exported[1].path.parent.parent / "testnet" / "1" / "metadata.json")
                                   .read_bytes())})
        assert r.status_code == 415  # through the key check to the route's own answer
    assert INFER_KEY not in caplog.text and ADMIN_KEY not in caplog.text


def test_every_route_with_keys_off(exported, loaded_model, tmp_path):
    with client_for(exported, loaded_model, tmp_path, api_keys_file=None) as c:
        wait_ready(c)
        for method, path, _ in routes(c.app):
            assert call(c, method, path).status_code not in (401, 403), (method, path)


def test_metrics_and_docs_keys_are_settings(exported, loaded_model, tmp_path):
    with client_for(exported, loaded_model, tmp_path, metrics_require_key=False, docs_require_key=True) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/docs").status_code == 401 and c.get("/openapi.json").status_code == 401
        assert c.get("/openapi.json", headers={"X-API-Key": INFER_KEY}).status_code == 200
        schemes = c.get("/openapi.json", headers={"X-API-Key": INFER_KEY}).json()["components"]["securitySchemes"]
        assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}  # /docs' Authorize button offers both
