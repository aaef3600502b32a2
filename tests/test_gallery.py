"""Gallery search (issue 20, the paper's Fig. 4): `alexnet-index` builds a version's gallery from a folder of real
images, a real uvicorn serves `POST /v2/models/{m}/search` and `/predict?neighbours=k`, and every answer is held to
a brute-force numpy search (every Euclidean distance computed) over the gallery's own stored vectors, with the
query's features taken from the served `features` output. Adding images publishes a new generation that the
running server searches without a restart; the generation before stays on disk, unchanged.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from support.paths import SKLEARN_IMAGES
from support.server import start_server, stop_server

from alexnet_store import ModelStore
from alexnet_store.gallery import GalleryStore
from alexnet_store.store import sha256_of
from service import gallery_cli


def images_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png"))


@pytest.fixture(scope="module")
def store(exported, tmp_path_factory) -> Path:
    """A writable copy of the `exported` store (the shared one is read-only)."""
    root, version, _ = exported
    copy = tmp_path_factory.mktemp("gallery-store")
    shutil.copytree(root / version.name, copy / version.name)
    return copy


@pytest.fixture(scope="module")
def built(store: Path, digits: Path) -> Path:
    """Generation 1: the 40 training digits (ImageNet layout: the labels are the folders' names)."""
    assert gallery_cli.main(["build", str(digits / "train"), "--model", "testnet", "--model-store", str(store),
                             "--batch-size", "4"]) == 0
    return store


@pytest.fixture(scope="module")
def server(built: Path, tmp_path_factory):
    srv = start_server(built, tmp_path_factory.mktemp("gallery-serve") / "serve.log", "--providers",
                       "CPUExecutionProvider", env={"ALEXNET_REPOSITORY_POLL_SECONDS": "1"})
    yield srv
    assert stop_server(srv) in (0, -signal.SIGTERM), srv.log.read_text()


def newest(store: Path):
    version = ModelStore(store).resolve("testnet", None)
    return GalleryStore(version.path).load()


def served_features(server, data: bytes) -> np.ndarray:
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}],
            "outputs": [{"name": "features"}]}
    r = httpx.post(f"{server.url}/v2/models/testnet/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"][0]["data"], np.float32)


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest by Euclidean distance, every distance computed in float64 (the reference): their positions and
    the distances to the whole gallery."""
    distances = np.sqrt(((vectors.astype(np.float64) - query.astype(np.float64)) ** 2).sum(axis=1))
    return np.argsort(distances, kind="stable")[:k], distances


def assert_same_neighbours(positions, distances, want: np.ndarray, every: np.ndarray) -> None:
    """The brute-force neighbours at their distances, nearest first; where two images are equally far (within
    1e-3) either may come first."""
    np.testing.assert_allclose(np.asarray(distances, np.float64), every[want], rtol=1e-4, atol=1e-3)
    for got, expected in zip(positions, want.tolist(), strict=True):
        assert got == expected or abs(every[got] - every[expected]) < 1e-3, (positions, want)


def test_build_publishes_a_verified_generation(built: Path, digits: Path):
    generation = newest(built)
    m = generation.manifest
    assert m.generation == 1 and m.count == len(images_of(digits / "train")) == 40
    assert m.dim == 4096 and "fc7" in m.features and m.index.kind == "flat" and m.index.library == "faiss"
    assert sorted({i.label for i in m.items}) == [str(d) for d in range(10)]
    assert all(not Path(i.file).is_absolute() and i.file.endswith(".png") for i in m.items)
    generation.verify()
    vectors = np.load(generation.file(m.vectors))
    assert vectors.shape == (40, 4096) and vectors.dtype == np.float32
    hidden = [p.name for p in generation.path.parent.iterdir() if p.name.startswith(".staging")]
    assert hidden == []


def test_search_equals_brute_force_numpy(server, built: Path, digits: Path):
    import tritonclient.http as triton

    generation = newest(built)
    vectors = np.load(generation.file(generation.manifest.vectors))
    queries = images_of(digits / "val")[:3]
    data = [q.read_bytes() for q in queries]
    image = triton.InferInput("image", [len(data), 1], "BYTES")
    image.set_data_from_numpy(np.array([[d] for d in data], dtype=object), binary_data=True)
    names = ("neighbours", "distances", "labels", "files")
    body, header_length = triton.InferenceServerClient.generate_request_body(
        [image], outputs=[triton.InferRequestedOutput(n, binary_data=True) for n in names], parameters={"k": 7})
    r = httpx.post(f"{server.url}/v2/models/testnet/search", content=body, timeout=60,
                   headers={"Inference-Header-Content-Length": str(header_length)})
    assert r.status_code == 200, r.text[:300]
    result = triton.InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers.get("Inference-Header-Content-Length", len(r.content))))
    positions, distances = result.as_numpy("neighbours"), result.as_numpy("distances")
    assert positions.shape == (3, 7) and positions.dtype == np.int64 and distances.dtype == np.float32
    params = result.get_response()["parameters"]
    assert params["gallery_generation"] == 1 and params["gallery_size"] == 40 and params["search"] == "flat"
    items = generation.manifest.items
    for i, photo in enumerate(data):
        want_p, want_d = brute_force(vectors, served_features(server, photo), 7)
        assert_same_neighbours(positions[i].tolist(), distances[i], want_p, want_d)
        assert [s.decode() for s in result.as_numpy("labels")[i]] == [items[p].label for p in positions[i]]
        assert [s.decode() for s in result.as_numpy("files")[i]] == [items[p].file for p in positions[i]]


def test_predict_neighbours_with_thumbnails(server, built: Path, digits: Path):
    generation = newest(built)
    vectors = np.load(generation.file(generation.manifest.vectors))
    query = images_of(digits / "val")[0].read_bytes()
    r = httpx.post(f"{server.url}/predict", params={"neighbours": 5}, files={"file": ("q.png", query)}, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["gallery"]["size"] == generation.manifest.count and answer["gallery"]["search"] == "flat"
    got = answer["results"][0]["neighbours"]
    want_p, want_d = brute_force(vectors, served_features(server, query), 5)
    assert_same_neighbours([n["position"] for n in got], [n["distance"] for n in got], want_p, want_d)
    for n in got:
        assert n["thumbnail"].startswith("data:image/jpeg;base64,")
        thumb = Image.open(io.BytesIO(base64.b64decode(n["thumbnail"].split(",", 1)[1])))
        assert thumb.size == (96, 96) and thumb.format == "JPEG"


def test_bad_searches_are_4xx_json(server):
    data = (SKLEARN_IMAGES / "china.jpg").read_bytes()
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}]}
    with server.client() as http:
        r = http.post("/v2/models/testnet/search", json={**body, "parameters": {"k": 1000}})
        assert r.status_code == 422 and "parameters.k: must be between 1 and" in r.json()["error"], r.text
        r = http.post("/v2/models/testnet/search", json={**body, "parameters": {"k": 0}})
        assert r.status_code == 400 and "parameters.k" in r.json()["error"], r.text
        r = http.post("/v2/models/testnet/search", json={**body, "outputs": [{"name": "probabilities"}]})
        assert r.status_code == 400 and "unknown output" in r.json()["error"], r.text
        r = http.post("/predict", params={"neighbours": 41}, files={"file": ("c.jpg", data)})
        assert r.status_code == 422 and "query parameter 'neighbours'" in r.json()["detail"], r.text
        r = http.post("/v2/models/nope/search", json=body)
        assert r.status_code == 404 and "error" in r.json()


def test_adding_images_needs_no_restart(server, built: Path, digits: Path, tmp_path: Path):
    first = newest(built)
    digests = {p.name: sha256_of(p) for p in first.path.iterdir()}
    extra = tmp_path / "val"
    shutil.copytree(digits / "val", extra)
    assert gallery_cli.main(["add", str(extra), "--model", "testnet", "--model-store", str(built),
                             "--no-progress"]) == 0
    second = newest(built)
    assert second.number == 2 and second.manifest.count == 50 and second.manifest.sources == ("train", "val")
    assert {p.name: sha256_of(p) for p in first.path.iterdir()} == digests  # generation 1 untouched
    query = images_of(extra)[0]
    r = httpx.post(f"{server.url}/predict", params={"neighbours": 1}, files={"file": ("q.png", query.read_bytes())},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["gallery"] == {"generation": 2, "size": 50, "search": "flat"}
    nearest = r.json()["results"][0]["neighbours"][0]
    assert nearest["file"] == query.relative_to(extra).as_posix() and nearest["distance"] < 1e-2  # itself
    assert gallery_cli.main(["add", str(extra), "--model", "testnet", "--model-store", str(built)]) == 0
    assert newest(built).number == 2  # nothing new: no generation 3


def test_approximate_index_above_the_exact_limit(store: Path, digits: Path, tmp_path: Path, capsys):
    """A gallery above --exact-limit gets an HNSW index with its recall@10 against exact search, measured at build on
    its own vectors; its answers are checked against brute force too."""
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    version = ModelStore(copy).resolve("testnet", None)
    shutil.rmtree(GalleryStore(version.path).root, ignore_errors=True)
    assert gallery_cli.main(["build", str(digits), "--model", "testnet", "--model-store", str(copy),
                             "--exact-limit", "20", "--no-thumbnails"]) == 0
    out = capsys.readouterr()
    assert "recall@10 against exact search" in out.out and "indexing" in out.err  # the tqdm bar
    generation = GalleryStore(version.path).load()
    spec = generation.manifest.index
    assert spec.kind == "hnsw" and spec.file == "index.faiss" and spec.recall_queries == 50
    assert 0.9 <= spec.recall_at_10 <= 1.0

    from service.gallery import LoadedGallery

    loaded = LoadedGallery(generation)
    vectors = loaded.vectors
    for i in (0, 17, 42):
        hits = loaded.search(vectors[i:i + 1], 10)[0]
        want, _ = brute_force(vectors, vectors[i], 10)
        assert len(set(hits.positions.tolist()) & set(want.tolist())) >= 9
        assert hits.positions[0] == i and hits.distances[0] < 1e-3


def test_a_failed_build_publishes_nothing(store: Path, tmp_path: Path, capsys):
    bad = tmp_path / "bad" / "cats"
    bad.mkdir(parents=True)
    (bad / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    version = ModelStore(store).resolve("testnet", None)
    before = GalleryStore(version.path).generations()
    assert gallery_cli.main(["build", str(bad.parent), "--model", "testnet", "--model-store", str(store),
                             "--no-progress"]) == gallery_cli.RUN_ERROR
    assert "skipped cats/cut.jpg" in capsys.readouterr().err
    assert GalleryStore(version.path).generations() == before
    assert not [p for p in GalleryStore(version.path).root.iterdir() if p.name.startswith(".staging")]
    assert gallery_cli.main(["build", str(tmp_path / "nowhere"), "--model", "testnet",
                             "--model-store", str(store)]) == gallery_cli.USAGE_ERROR


def test_staging_is_removed_when_writing_fails(store: Path):
    version = ModelStore(store).resolve("testnet", None)
    gallery = GalleryStore(version.path)
    before = gallery.generations()
    with pytest.raises(OSError), gallery.new_generation() as staging:
        (staging.path / "vectors.npy").write_bytes(b"partial")
        raise OSError("disk full")
    assert gallery.generations() == before
    assert not [p for p in gallery.root.iterdir() if p.name.startswith(".staging")]
    assert json.loads((gallery.root / str(before[-1]) / "gallery.json").read_text())["generation"] == before[-1]
