"""A version's image gallery in the service: the paper's Fig. 4 search, by the Euclidean distance of features.

The gallery's files (alexnet_store/gallery.py: ``<version>/gallery/<generation>/``) hold each indexed image's
features — the version's penultimate layer (`onnx.features`) averaged over the crop scheme's patches, exactly what
``POST /v2/models/{m}/infer`` returns as ``features`` — and, above `EXACT_LIMIT` images, an approximate index.
`alexnet-index` (service/gallery_cli.py) writes them; this module reads and searches them.

**The library** is faiss (faiss-cpu), chosen by measurement on the 2-core machine of docs/benchmark.md
(bench/search_bench.py, against usearch and hnswlib, 4096-d, M=32, efConstruction 80, efSearch 128): its HNSW
builds fastest (1,900-2,200 vectors/s against hnswlib's 1,200-1,550 and usearch's 870-890) and answers fastest
at 10,000 (p50 1.63 ms against 2.92 and 3.79 ms) at the same recall, and it has the exact index too.
``IndexFlatL2`` is exact search (every distance computed), ``IndexHNSWFlat`` the approximate index (HNSW over the
full float32 vectors). Distances are the paper's
Euclidean distance, ‖q − g‖ (faiss computes its square; the square root is taken here).

**Exact or approximate**: a gallery of at most `EXACT_LIMIT` images is searched exactly (a flat index built from
the vectors at load: nothing but the vectors is stored); a larger one gets an HNSW index at build, stored beside
the vectors, whose recall@10 against exact search on the gallery itself is measured then and recorded in the
manifest (``index.recall_at_10``).

**New images without a restart**: each search asks the store for the version's newest generation (a directory
listing: microseconds); when it is newer than the one loaded, it is loaded in a worker thread while the searches
already running finish on the old one, and every later search uses it. A generation that fails to load (a damaged
file: each data file's sha256 is checked) is logged once and the one before keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_store.gallery import GalleryIndex, GalleryStore, Generation
from alexnet_store.store import StoreError

log = logging.getLogger(__name__)

LIBRARY = "faiss"
# Galleries up to this many images are searched exactly; above, with HNSW. Measured (bench/search_bench.py,
# docs/benchmark.md#gallery-search, 2-core AMD EPYC): faiss's exact search of one 4096-d query takes p50 0.35 ms at
# 1,000 images, 4.8 ms at 5,000, 13.7 ms at 10,000 and 146 ms at 100,000 (linear: every vector is read), against
# ~80 ms of model time per ten-crop image; HNSW answers in 0.8-1.8 ms at every size (recall@10 >= 0.996) but costs
# ~0.5 ms of build per vector (4.6 s at 10,000, 52 s at 100,000). Up to 10,000 exact search adds at most a sixth
# of a request's time and needs no index; above, it would soon cost more than the model run.
EXACT_LIMIT = 10_000
HNSW_M = 32  # links per node
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
RECALL_QUERIES = 500  # gallery vectors used to measure an approximate index's recall@10 at build


class GalleryError(RuntimeError):
    """A gallery that cannot be loaded or built as asked."""


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # the serve extra installs it; a bare onnxruntime environment may not have it
        raise GalleryError("gallery search needs faiss: pip install faiss-cpu (the serve extra has it)") from exc
    return faiss


# -- building (alexnet-index) ------------------------------------------------------------------------------
def exact_index(vectors: np.ndarray):
    index = _faiss().IndexFlatL2(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, np.float32))
    return index


def hnsw_index(vectors: np.ndarray, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION,
               ef_search: int = HNSW_EF_SEARCH):
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(vectors.shape[1], m)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(vectors, np.float32))
    index.hnsw.efSearch = ef_search
    return index


def recall_at_10(index, vectors: np.ndarray, queries: int = RECALL_QUERIES, seed: int = 0) -> tuple[float, int]:
    """recall@10 of `index` against exact search, queried with up to `queries` of the gallery's own vectors."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False))
    q = np.ascontiguousarray(vectors[picked], np.float32)
    k = min(10, len(vectors))
    _, exact = exact_index(vectors).search(q, k)
    _, found = index.search(q, k)
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)])), len(picked)


def write_index(vectors: np.ndarray, folder: Path, *, exact_limit: int = EXACT_LIMIT, m: int = HNSW_M,
                ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int = HNSW_EF_SEARCH) -> GalleryIndex:
    """The index a generation of these vectors gets (written into `folder`, a staging folder): none for an exact
    gallery (flat, built at load), an HNSW file above `exact_limit`, with its measured recall@10."""
    if len(vectors) <= exact_limit:
        return GalleryIndex(library=LIBRARY, kind="flat")
    index = hnsw_index(vectors, m, ef_construction, ef_search)
    measured, queries = recall_at_10(index, vectors)
    _faiss().write_index(index, str(folder / "index.faiss"))
    return GalleryIndex(library=LIBRARY, kind="hnsw", file="index.faiss",
                        params={"m": m, "ef_construction": ef_construction, "ef_search": ef_search},
                        recall_at_10=round(measured, 4), recall_queries=queries)


# -- serving ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hits:
    """One query's neighbours, nearest first: gallery positions and Euclidean distances."""

    positions: np.ndarray  # int64 [k]
    distances: np.ndarray  # float32 [k]


class LoadedGallery:
    """One generation in memory: its vectors, its index, its thumbnails."""

    def __init__(self, generation: Generation) -> None:
        generation.verify()
        manifest = generation.manifest
        self.generation = generation.number
        self.manifest = manifest
        self.items = manifest.items
        vectors = np.load(generation.file(manifest.vectors), allow_pickle=False)
        if vectors.dtype != np.float32 or vectors.shape != (manifest.count, manifest.dim):
            raise GalleryError(f"gallery generation {self.generation}: vectors are {vectors.dtype} {vectors.shape}, "
                               f"the manifest says float32 ({manifest.count}, {manifest.dim})")
        self.vectors = vectors
        spec = manifest.index
        if spec.kind == "flat":
            self.index = exact_index(vectors)
        elif spec.kind == "hnsw" and spec.file:
            self.index = _faiss().read_index(str(generation.file(spec.file)))
            self.index.hnsw.efSearch = int(spec.params.get("ef_search", HNSW_EF_SEARCH))
            if self.index.ntotal != manifest.count:
                raise GalleryError(f"gallery generation {self.generation}: its index holds {self.index.ntotal} "
                                   f"vectors, the manifest {manifest.count}")
        else:
            raise GalleryError(f"gallery generation {self.generation}: unknown index {spec.library}/{spec.kind}")
        self.kind = spec.kind
        self.thumbnails = generation.file(manifest.thumbnails).read_bytes() if manifest.thumbnails else b""

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def search(self, queries: np.ndarray, k: int) -> list[Hits]:
        """The k nearest gallery images of each query vector [n, D], nearest first (in a worker thread: faiss
        releases the GIL)."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise GalleryError(f"queries of shape {queries.shape} for a gallery of {self.dim}-d vectors")
        queries = np.ascontiguousarray(queries, np.float32)
        squared, positions = self.index.search(queries, k)
        if self.kind != "flat" and (positions < 0).any():  # HNSW found fewer than k: those queries searched exactly
            short = np.flatnonzero((positions < 0).any(axis=1))
            squared[short], positions[short] = exact_index(self.vectors).search(queries[short], k)
        return [Hits(p.astype(np.int64), np.sqrt(np.maximum(d, 0)).astype(np.float32))
                for p, d in zip(positions, squared, strict=True)]

    def thumbnail(self, position: int) -> bytes | None:
        offset, length = self.items[position].thumbnail
        return self.thumbnails[offset:offset + length] if length else None


class GalleryHandle:
    """A served version's gallery: the newest generation, loaded when a search first needs it and again whenever a
    newer one has been published."""

    def __init__(self, version_path: Path) -> None:
        self.store = GalleryStore(version_path)
        self.loaded: LoadedGallery | None = None
        self._failed: set[int] = set()  # generations that did not load: not retried on every search
        self._lock: asyncio.Lock | None = None

    def newest(self) -> int | None:
        try:
            return self.store.newest()
        except OSError:
            return None

    async def current(self) -> LoadedGallery | None:
        """The newest loadable generation (None: the version has no gallery)."""
        from service.runner import run_to_completion

        newest = self.newest()
        loaded = self.loaded
        if newest is None or (loaded is not None and loaded.generation == newest) or newest in self._failed:
            return loaded if newest is not None else None
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.loaded is None or self.loaded.generation != newest:
                try:
                    self.loaded = await run_to_completion(self._load, newest)
                except (GalleryError, StoreError, OSError, ValueError) as exc:
                    self._failed.add(newest)
                    log.error("gallery generation %d of %s could not be loaded: %s%s", newest, self.store.version_path,
                              exc, "; the one before keeps serving" if self.loaded is not None else "")
                    if self.loaded is None:
                        raise GalleryError(f"the gallery could not be loaded: {exc}") from exc
        return self.loaded

    def _load(self, number: int) -> LoadedGallery:
        generation = self.store.load(number)
        if generation is None:
            raise GalleryError("the gallery disappeared")
        gallery = LoadedGallery(generation)
        log.info("gallery generation %d loaded: %d images, %s search", number, gallery.count, gallery.kind)
        return gallery


def precision_at_k(vectors: np.ndarray, labels: Sequence[str], k: int = 5) -> tuple[float, int]:
    """Leave-one-out precision@k over a labelled gallery, by exact search: for every image with a label, the share
    of its k nearest *other* images that have its label. (mean, images counted)."""
    index = exact_index(vectors)
    keep = [i for i, label in enumerate(labels) if label]
    if not keep or len(vectors) <= k:
        return math.nan, 0
    _, found = index.search(np.ascontiguousarray(vectors[keep], np.float32), k + 1)
    scores = []
    for i, row in zip(keep, found, strict=True):
        others = [j for j in row if j != i][:k]
        scores.append(sum(labels[j] == labels[i] for j in others) / k)
    return float(np.mean(scores)), len(keep)
