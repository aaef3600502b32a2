"""Gallery search, measured: which vector library, and from what size an approximate index (docs/benchmark.md).

    python -m bench.search_bench [--sizes 1000,10000,100000] [--dim 4096] [--libraries faiss,usearch,hnswlib]
                                 [--queries 200] [--json out.json]

For each gallery size: synthetic vectors shaped like the paper's fc7 activations (non-negative — they come out of a
ReLU —, clustered: `--clusters` centres, each vector a centre plus noise, then the ReLU; a real gallery's features
cluster by what the images show), and held-out query vectors from the same clusters. Against brute force in numpy
(the exact answer, ||q||² + ||g||² − 2 q·g over the whole gallery), each library's exact search and its HNSW index:
build time (vectors/s), the latency of one query (p50/p99 over `--queries` single-vector searches, as the service
runs them: one request's image at a time), and recall@10 (the share of the exact ten nearest that the index
returns). Libraries that are not installed are skipped (``pip install faiss-cpu usearch hnswlib``).

The gallery build itself — images through the model (`alexnet-index build`) — is measured by that command, which
prints its images/s; this script measures what comes after the features.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

K = 10


@dataclass
class Row:
    size: int
    dim: int
    library: str
    kind: str  # exact / hnsw
    params: str
    build_s: float
    vectors_per_s: float
    p50_ms: float
    p99_ms: float
    recall_at_10: float


def synthetic(size: int, queries: int, dim: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    def draw(n: int) -> np.ndarray:
        out = np.empty((n, dim), np.float32)
        for start in range(0, n, 10_000):  # in chunks: the noise of 100k × 4096 at once would double the memory
            stop = min(n, start + 10_000)
            which = rng.integers(0, clusters, stop - start)
            out[start:stop] = centres[which] + 0.6 * rng.standard_normal((stop - start, dim), dtype=np.float32)
        np.maximum(out, 0, out=out)
        return out
    return draw(size), draw(queries)


def brute_force(gallery: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """The exact k nearest by Euclidean distance, in numpy (the reference every index is held to)."""
    norms = np.einsum("ij,ij->i", gallery, gallery)
    out = np.empty((len(queries), k), np.int64)
    for i, q in enumerate(queries):
        d = norms - 2 * gallery @ q
        top = np.argpartition(d, k)[:k]
        out[i] = top[np.argsort(d[top], kind="stable")]
    return out


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def timed_queries(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[np.ndarray, float, float]:
    search(queries[:1])  # warm
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(search(q[None, :])[0])
        times.append(time.perf_counter() - start)
    ms = 1000 * np.asarray(times)
    return np.asarray(found), float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


# -- the candidates -------------------------------------------------------------------------------------------
def numpy_exact(gallery: np.ndarray):
    norms = np.einsum("ij,ij->i", gallery, gallery)

    def search(q: np.ndarray) -> np.ndarray:
        d = norms[None, :] - 2 * q @ gallery.T
        top = np.argpartition(d, K, axis=1)[:, :K]
        return np.take_along_axis(top, np.argsort(np.take_along_axis(d, top, 1), axis=1), 1)
    return search


def faiss_exact(gallery: np.ndarray):
    import faiss

    index = faiss.IndexFlatL2(gallery.shape[1])
    index.add(gallery)
    return lambda q: index.search(q, K)[1]


def faiss_hnsw(gallery: np.ndarray, m: int, ef_construction: int, ef_search: int):
    import faiss

    index = faiss.IndexHNSWFlat(gallery.shape[1], m)
    index.hnsw.efConstruction = ef_construction
    index.add(gallery)
    index.hnsw.efSearch = ef_search
    return lambda q: index.search(q, K)[1]


def usearch_exact(gallery: np.ndarray):
    from usearch.index import search

    return lambda q: np.atleast_2d(search(gallery, q, K, "l2sq", exact=True).keys)


def usearch_hnsw(gallery: np.ndarray, m: int, ef_construction: int, ef_search: int):
    from usearch.index import Index

    index = Index(ndim=gallery.shape[1], metric="l2sq", dtype="f32", connectivity=m, expansion_add=ef_construction,
                  expansion_search=ef_search)
    index.add(np.arange(len(gallery)), gallery)
    return lambda q: np.atleast_2d(index.search(q, K).keys)


def hnswlib_hnsw(gallery: np.ndarray, m: int, ef_construction: int, ef_search: int):
    import hnswlib

    index = hnswlib.Index(space="l2", dim=gallery.shape[1])
    index.init_index(max_elements=len(gallery), ef_construction=ef_construction, M=m)
    index.add_items(gallery, np.arange(len(gallery)))
    index.set_ef(ef_search)
    return lambda q: index.knn_query(q, k=K)[0].astype(np.int64)


CANDIDATES = {
    "numpy": [("exact", numpy_exact, {})],
    "faiss": [("exact", faiss_exact, {}), ("hnsw", faiss_hnsw, {})],
    "usearch": [("exact", usearch_exact, {}), ("hnsw", usearch_hnsw, {})],
    "hnswlib": [("hnsw", hnswlib_hnsw, {})],
}
MODULE = {"faiss": "faiss", "usearch": "usearch", "hnswlib": "hnswlib", "numpy": "numpy"}


def run(sizes: list[int], dim: int, libraries: list[str], queries: int, clusters: int, m: int, ef_construction: int,
        ef_search: int, log: Callable[[str], None] = print) -> list[Row]:
    rows = []
    for size in sizes:
        gallery, query = synthetic(size, queries, dim, clusters)
        exact = brute_force(gallery, query)
        log(f"gallery of {size:,} × {dim} ({gallery.nbytes / 2**20:.0f} MiB)")
        for library in ["numpy", *libraries]:
            if importlib.util.find_spec(MODULE[library]) is None:
                log(f"  {library}: not installed, skipped")
                continue
            for kind, make, _ in CANDIDATES[library]:
                params = {} if kind == "exact" else {"m": m, "ef_construction": ef_construction, "ef_search": ef_search}
                start = time.perf_counter()
                search = make(gallery, **params)
                build = time.perf_counter() - start
                found, p50, p99 = timed_queries(search, query)
                row = Row(size, dim, library, kind, ",".join(f"{k}={v}" for k, v in params.items()), round(build, 3),
                          round(size / max(build, 1e-9)), round(p50, 3), round(p99, 3), round(recall(found, exact), 4))
                rows.append(row)
                log(f"  {library:8s} {kind:5s} build {build:8.2f} s ({row.vectors_per_s:>9,} vectors/s)  query p50 "
                    f"{p50:8.2f} ms  p99 {p99:8.2f} ms  recall@10 {row.recall_at_10:.4f}")
                del search
        del gallery
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.search_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="gallery sizes, comma-separated")
    p.add_argument("--dim", type=int, default=4096, help="vector width (the paper's fc7: 4096)")
    p.add_argument("--libraries", default="faiss,usearch,hnswlib", help="comma-separated (numpy always runs)")
    p.add_argument("--queries", type=int, default=200, help="single-vector queries per gallery")
    p.add_argument("--clusters", type=int, default=200, help="cluster centres of the synthetic vectors")
    p.add_argument("--m", type=int, default=32, help="HNSW links per node (M)")
    p.add_argument("--ef-construction", type=int, default=80, help="HNSW candidate list while building")
    p.add_argument("--ef-search", type=int, default=128, help="HNSW candidate list while searching")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    rows = run([int(s) for s in args.sizes.split(",")], args.dim, [s for s in args.libraries.split(",") if s],
               args.queries, args.clusters, args.m, args.ef_construction, args.ef_search)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
