"""Traffic control against a real `alexnet-serve` (uvicorn) on real exported models: the split, sticky routing,
shadows, per-version metrics, the control API, and a rollover under a split.

The store holds the `exported` model as v1, an exact copy as v2 (they answer alike, so only the version in the
answer tells them apart, and a shadow on v2 must agree with v1 on every image) and a corrupt copy as v3 (it fails
to load: a shadow on it fails every time). Requests carry fixed request ids / user ids, so where each one goes is
known in advance from service/traffic.py's decision function, which the server must follow exactly; the shares
are checked against a binomial 99.9 % interval on top (tests/test_traffic.py does 2,000 in process). Small
images and ``crops=center`` keep a request at a few milliseconds of model time on 2 cores.
"""

from __future__ import annotations

import asyncio
import base64
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.app import clone_version
from support.images import image
from support.server import start_server, stop_server

from service.traffic import Rule

MODEL = "testnet"
PHOTO = image("JPEG", 96, 72, seed=5)
SPLIT = Rule(split=((1, 90.0), (2, 10.0)), shadow=((2, 30.0), (3, 20.0)))  # as the server starts (its settings)
# What a test that changed the rule puts back: the control API refuses versions that are not loaded (v3), so the
# tests that need v3's shadow run before any that change the rule.
RESTORED = {"split": {"1": 90, "2": 10}, "shadow": {"2": 30}}
INFER, ADMIN = "infer-key-0123456789", "admin-key-0123456789"
Z_999 = 3.2905


def within(count: int, n: int, p: float) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - Z_999 * sd <= count <= n * p + Z_999 * sd


@pytest.fixture(scope="module")
def store(exported, tmp_path_factory):
    _, version, _ = exported
    root = tmp_path_factory.mktemp("traffic") / "store"
    shutil.copytree(version.path, root / MODEL / "1")
    assert clone_version(root, MODEL, 1) == 2
    assert clone_version(root, MODEL, 1, corrupt=True) == 3
    return root


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("traffic-serve")
    keys = folder / "keys"
    keys.write_text(f"{INFER} infer\n{ADMIN} admin\n")
    env = {"ALEXNET_VERSION_POLICY": "all", "ALEXNET_TRAFFIC": f"{MODEL}=1:90,2:10",
           "ALEXNET_SHADOW": f"{MODEL}=2:30,3:20", "ALEXNET_TRAFFIC_STICKY_HEADER": "X-User-ID",
           "ALEXNET_SHADOW_MAX_INFLIGHT": "16", "ALEXNET_WARMUP_BATCH": "1", "ALEXNET_REPOSITORY_POLL_SECONDS": "0"}
    server = start_server(store, folder / "serve.log", "--providers", "CPUExecutionProvider", "--api-keys-file",
                          str(keys), env=env)
    yield server
    stop_server(server)
    assert "Traceback" not in server.log.read_text()


def client(server, key: str = INFER) -> httpx.Client:
    return server.client(headers={"Authorization": f"Bearer {key}"})


def predict(c: httpx.Client, request_id: str, **params) -> httpx.Response:
    return c.post("/predict", params={"crops": "center", "top_k": 1, **params}, files={"file": ("a.jpg", PHOTO)},
                  headers={"X-Request-ID": request_id})


def infer(c: httpx.Client, request_id: str, version: int | None = None, headers: dict | None = None) -> httpx.Response:
    path = f"/v2/models/{MODEL}" + (f"/versions/{version}" if version else "") + "/infer"
    data = [base64.b64encode(PHOTO).decode()]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": data}],
            "parameters": {"crops": "center"}}
    return c.post(path, json=body, headers={"X-Request-ID": request_id, **(headers or {})})


def answered(r: httpx.Response) -> int:
    assert r.status_code == 200, r.text
    body = r.json()
    return int(body["model"]["version"]) if "model" in body else int(body["model_version"])


def metrics(server) -> dict[tuple, float]:
    with client(server) as c:
        text = c.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(("alexnet_version_", "alexnet_shadow_")):
                out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def counter(m: dict, name: str, **labels) -> float:
    return m.get((name, *sorted({"model": MODEL, **labels}.items())), 0.0)


def copies(m: dict, version: int) -> float:
    return sum(counter(m, "alexnet_shadow_requests_total", version=str(version), outcome=o)
               for o in ("ok", "error", "shed"))


def settle(server, before: dict, version: int, expected: float) -> dict:
    """Shadow copies finish after their requests were answered: wait until `expected` more have been counted."""
    deadline = time.monotonic() + 30
    while True:
        m = metrics(server)
        if copies(m, version) - copies(before, version) >= expected or time.monotonic() > deadline:
            return m
        time.sleep(0.2)


def many(server, calls: list, workers: int = 8) -> list:
    with ThreadPoolExecutor(workers) as pool, client(server) as c:
        return list(pool.map(lambda call: call(c), calls))


def test_the_split_sends_each_request_where_its_id_falls(served):
    ids = [f"split-{i}" for i in range(400)]
    expected = {i: SPLIT.choose(MODEL, i, {1, 2}) for i in ids}
    before = metrics(served)
    calls = [(lambda c, i=i: predict(c, i)) if n % 2 else (lambda c, i=i: infer(c, i)) for n, i in enumerate(ids)]
    got = dict(zip(ids, (answered(r) for r in many(served, calls)), strict=True))
    assert got == expected  # every one of 400 real requests, /predict and v2 alike, where the function says
    assert within(sum(v == 2 for v in got.values()), len(ids), 0.10)
    after = metrics(served)
    for version in (1, 2):  # per-version counters: a canary is judged from /metrics alone
        delta = counter(after, "alexnet_version_requests_total", version=str(version), code="200") - \
            counter(before, "alexnet_version_requests_total", version=str(version), code="200")
        assert delta == sum(v == version for v in got.values())
        assert counter(after, "alexnet_version_request_duration_seconds_count", version=str(version)) > 0


def test_the_shadow_sees_its_share_agrees_and_its_failures_reach_no_client(served):
    ids = [f"shadow-{i}" for i in range(300)]
    primary = {i: SPLIT.choose(MODEL, i, {1, 2}) for i in ids}
    to_v2 = sum(2 in SPLIT.shadows(MODEL, i, primary[i]) for i in ids)
    to_v3 = sum(3 in SPLIT.shadows(MODEL, i, primary[i]) for i in ids)
    assert within(to_v3, len(ids), 0.20)
    before = metrics(served)
    statuses = [r.status_code for r in many(served, [lambda c, i=i: predict(c, i) for i in ids])]
    assert statuses == [200] * len(ids)  # v3 fails every copy it is sent: no client sees it

    def delta(m, name, **labels):
        return counter(m, name, **labels) - counter(before, name, **labels)

    after = settle(served, before, 2, to_v2)
    v2 = {o: delta(after, "alexnet_shadow_requests_total", version="2", outcome=o) for o in ("ok", "error", "shed")}
    assert v2["ok"] + v2["shed"] == to_v2 and v2["error"] == 0, (v2, to_v2)
    assert v2["ok"] >= 0.5 * to_v2  # sheds only while v2 itself has requests waiting
    agreed = delta(after, "alexnet_shadow_top1_total", version="2", agree="true")
    assert agreed == v2["ok"] and delta(after, "alexnet_shadow_top1_total", version="2", agree="false") == 0
    assert delta(after, "alexnet_shadow_duration_seconds_count", version="2") == v2["ok"]
    after = settle(served, before, 3, to_v3)
    v3 = {o: delta(after, "alexnet_shadow_requests_total", version="3", outcome=o) for o in ("ok", "error", "shed")}
    assert v3["error"] + v3["shed"] == to_v3 and v3["ok"] == 0, (v3, to_v3)


def test_a_version_in_the_url_bypasses_the_split_and_the_shadow(served):
    before = metrics(served)
    with client(served) as c:
        ids = [f"explicit-{i}" for i in range(20)]
        assert {answered(predict(c, i, version=2)) for i in ids} == {2}
        assert {answered(infer(c, i, version=1)) for i in ids} == {1}
    time.sleep(1.0)
    after = metrics(served)
    for version, outcome in ((2, "ok"), (2, "shed"), (3, "error"), (3, "shed")):
        key = {"version": str(version), "outcome": outcome}
        assert counter(after, "alexnet_shadow_requests_total", **key) == \
            counter(before, "alexnet_shadow_requests_total", **key)


def test_sticky_keys_stay_while_the_weights_stay(served):
    users = [f"user-{i}" for i in range(120)]

    def route(c, user, n):
        return answered(c.post("/predict", params={"crops": "center", "top_k": 1}, files={"file": ("a.jpg", PHOTO)},
                               headers={"X-User-ID": user, "X-Request-ID": f"sticky-{user}-{n}"}))

    expected = {u: SPLIT.choose(MODEL, u, {1, 2}) for u in users}
    rounds = [dict(zip(users, many(served, [lambda c, u=u, n=n: route(c, u, n) for u in users]), strict=True))
              for n in range(2)]
    assert rounds[0] == rounds[1] == expected
    assert 1 <= sum(v == 2 for v in expected.values()) < len(users) / 4
    with client(served, ADMIN) as admin:
        try:  # the same weights set again: nobody moves
            assert admin.post(f"/v2/repository/models/{MODEL}/traffic", json=RESTORED).status_code == 200
            again = dict(zip(users, many(served, [lambda c, u=u: route(c, u, 2) for u in users]), strict=True))
            assert again == expected
            r = admin.post(f"/v2/repository/models/{MODEL}/traffic",  # the canary's share raised: only towards it
                           json={"split": {"1": 50, "2": 50}})
            assert r.status_code == 200 and r.json()["effective"] == {"1": 0.5, "2": 0.5}
            moved = dict(zip(users, many(served, [lambda c, u=u: route(c, u, 3) for u in users]), strict=True))
            assert moved == {u: Rule(split=((1, 50.0), (2, 50.0))).choose(MODEL, u, {1, 2}) for u in users}
            assert all(moved[u] == 2 for u in users if expected[u] == 2)
        finally:
            assert admin.post(f"/v2/repository/models/{MODEL}/traffic", json=RESTORED).status_code == 200


def test_a_request_that_fails_counts_for_its_version(served):
    request_id = next(f"bad-{i}" for i in range(100) if SPLIT.choose(MODEL, f"bad-{i}", {1, 2}) == 2)
    before = metrics(served)
    with client(served) as c:
        r = c.post("/predict", params={"crops": "center"}, files={"file": ("cut.jpg", PHOTO[:300])},
                   headers={"X-Request-ID": request_id})
    assert r.status_code == 400 and r.headers["x-request-id"] == request_id
    after = metrics(served)
    assert counter(after, "alexnet_version_requests_total", version="2", code="400") - \
        counter(before, "alexnet_version_requests_total", version="2", code="400") == 1


def test_the_control_api(served):
    path = f"/v2/repository/models/{MODEL}/traffic"
    with client(served) as c:
        state = c.get(path).json()
        assert state == {"name": MODEL, "split": {"1": 90.0, "2": 10.0}, "shadow": {"2": 30.0},
                         "effective": {"1": 0.9, "2": 0.1}, "default": 2, "sticky_header": "X-User-ID"}
        r = c.post(path, json={"split": {"2": 1}})
        assert r.status_code == 403 and "admin" in r.json()["error"]  # changing traffic needs the admin scope
        assert c.get("/v2/repository/models/nope/traffic").status_code == 404
    with served.client() as anonymous:
        assert anonymous.get(path).status_code == 401
    with client(served, ADMIN) as admin:
        for body, status, words in [
            ({"split": {"1": -5}}, 422, "must not be negative"),
            ({"split": {"1": 0}}, 422, "at least one weight"),
            ({"shadow": {"2": 150}}, 422, "at most 100"),
            ({"split": {"4": 1}}, 422, "version 4 is not loaded"),
            ({"split": {"3": 1}}, 422, "version 3 is not loaded"),  # the corrupt one never loaded
            ({"split": {"one": 1}}, 422, "split"),
            ({"split": [1, 2]}, 422, "split"),
        ]:
            r = admin.post(path, json=body)
            assert r.status_code == status and words in r.json()["error"], (body, r.status_code, r.text)
        r = admin.post(path, content=b"not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "error" in r.json()
        assert admin.post("/v2/repository/models/nope/traffic", json={}).status_code == 404
        try:
            r = admin.post(path, json={})  # no split, no shadow: every request to the default version
            assert r.status_code == 200 and r.json()["effective"] == {} and r.json()["default"] == 2
            assert {answered(predict(admin, f"cleared-{i}")) for i in range(10)} == {2}
        finally:
            assert admin.post(path, json=RESTORED).status_code == 200


# -- a rollover under a split ------------------------------------------------------------------------------------
async def closed_loop(url: str, stop: asyncio.Event, answers: list, clients: int = 8) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as c:
        async def one(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                sent = time.monotonic()
                try:
                    r = await c.post("/predict", params={"crops": "center", "top_k": 1},
                                     files={"file": ("a.jpg", PHOTO)}, headers={"X-Request-ID": f"roll-{n}-{i}"})
                    status = r.status_code
                    version = r.json()["model"]["version"] if status == 200 else None
                except httpx.HTTPError as exc:
                    status, version = type(exc).__name__, None
                answers.append((sent, time.monotonic(), status, version))

        await asyncio.gather(*(one(n) for n in range(clients)))


@pytest.mark.slow
def test_a_rollover_under_a_split_loses_no_request(exported, tmp_path):
    """latest:2 with a 50/50 split over v1 and v2; v3 is published under load: v1 retires (its requests finish on
    it), its share goes to v2, and v3 takes none until the split names it — and not one request fails."""
    _, version, _ = exported
    root = tmp_path / "store"
    shutil.copytree(version.path, root / MODEL / "1")
    clone_version(root, MODEL, 1)
    server = start_server(root, tmp_path / "serve.log", "--providers", "CPUExecutionProvider",
                          env={"ALEXNET_VERSION_POLICY": "latest:2", "ALEXNET_TRAFFIC": f"{MODEL}=1:50,2:50",
                               "ALEXNET_REPOSITORY_POLL_SECONDS": "0.5", "ALEXNET_WARMUP_BATCH": "1"})
    answers: list = []

    async def scenario() -> tuple[float, float]:
        stop = asyncio.Event()
        load = asyncio.create_task(closed_loop(server.url, stop, answers))
        await asyncio.sleep(3)
        clone_version(root, MODEL, 2)
        published = time.monotonic()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            while True:  # until v3 serves and v1 is released
                index = {e["version"]: e["state"] for e in (await c.post("/v2/repository/index")).json()}
                if index.get("3") == "READY" and index.get("1") == "UNAVAILABLE":
                    break
                assert time.monotonic() - published < 120, f"v1 never retired: {index}"
                await asyncio.sleep(0.3)
        switched = time.monotonic()
        await asyncio.sleep(2)
        stop.set()
        await load
        return published, switched

    try:
        published, switched = asyncio.run(scenario())
        with httpx.Client(base_url=server.url, timeout=30) as c:
            index = {e["version"]: e["state"] for e in c.post("/v2/repository/index").json()}
            traffic = c.get(f"/v2/repository/models/{MODEL}/traffic").json()
    finally:
        stop_server(server)
    failures = [a for a in answers if a[2] != 200]
    assert len(answers) > 100 and not failures, f"{len(failures)} of {len(answers)} failed: {failures[:5]}"
    before = [a[3] for a in answers if a[1] < published]
    assert within(before.count(2), len(before), 0.5) and set(before) == {1, 2}  # the split before the rollover
    assert 3 not in {a[3] for a in answers}  # v3 is loaded, the default, and outside the split: it takes nothing
    assert {a[3] for a in answers if a[0] > switched} == {2}  # v1's share went to v2
    assert index == {"1": "UNAVAILABLE", "2": "READY", "3": "READY"}
    assert traffic["effective"] == {"2": 1.0} and traffic["default"] == 3
    assert "Traceback" not in server.log.read_text()
