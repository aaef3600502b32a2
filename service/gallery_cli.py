"""`alexnet-index`: a folder of images → a version's gallery, for the paper's Fig. 4 search (service/gallery.py).

    alexnet-index build DIR --model NAME [--version N] [--model-store DIR] [--crops ten|center] [--exact-limit N]
                            [--no-thumbnails] [--batch-size N] [--workers N] [--providers P1,P2]
    alexnet-index add   DIR --model NAME ...   a new generation: the gallery's images and DIR's new ones
    alexnet-index info      --model NAME       the generations, and what the newest holds
    alexnet-index evaluate  --model NAME [-k 5]   leave-one-out precision@k over the labelled images

`build` runs every image of DIR (recursively; in the ImageNet layout ``DIR/<class>/<image>`` each image's label
is its folder's name) through the version's own pipeline in this process — the service's decode, patches,
batching and serving graph (service/pipeline.py), the crop scheme of the model unless ``--crops`` says —, keeps
each image's features averaged over its patches, its top-1 class and a 96×96 JPEG thumbnail of the square its
patches are cut from, and publishes them as the next generation of ``<store>/<name>/<version>/gallery/``
(alexnet_store/gallery.py: staged, then renamed into place; nothing published is ever rewritten). A gallery of
more than ``--exact-limit`` images also gets an approximate (HNSW) index, whose recall@10 against exact search is
measured on the gallery's own vectors and printed and recorded. `add` skips the images of DIR that the gallery
already holds from a folder of the same name. A running service picks up a new generation at its next search: no
restart, no reload call.

Exit status: 0 on success, 2 for usage errors (no such model, a version without features, an empty folder),
1 when the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_store import ModelStore, ModelVersion, StoreError
from alexnet_store.gallery import GalleryItem, GalleryManifest, GalleryStore, Generation
from alexnet_store.vocabulary import CROP_SCHEMES, is_image_file
from service.gallery import EXACT_LIMIT, GalleryError, precision_at_k, write_index

USAGE_ERROR = 2
RUN_ERROR = 1
THUMBNAIL_SIZE = 96
THUMBNAIL_QUALITY = 80


class UsageError(ValueError):
    pass


@dataclass
class Indexed:
    """What a run through the model gives for the images of one folder."""

    files: list[str]
    labels: list[str]
    predicted: list[str]
    vectors: np.ndarray  # float32 [n, D]
    thumbnails: list[bytes]
    failed: list[tuple[str, str]]
    seconds: float


def find_images(folder: Path) -> list[tuple[str, str]]:
    """(path relative to `folder`, label) for every image below it, sorted; the label is the first folder."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and is_image_file(path.name) and not any(p.startswith(".") for p in path.parts):
            rel = path.relative_to(folder)
            out.append((rel.as_posix(), rel.parts[0] if len(rel.parts) > 1 else ""))
    return out


def thumbnail(square: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(square).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BICUBIC).save(
        buf, "JPEG", quality=THUMBNAIL_QUALITY)
    return buf.getvalue()


def index_folder(backend, folder: Path, files: list[tuple[str, str]], scheme: str, thumbnails: bool,
                 progress: bool) -> Indexed:
    """Every file through the service's pipeline (many in flight, so the batcher fills its runs)."""
    from tqdm import tqdm

    pipeline = backend.factory([scheme]).pipeline(backend.model)
    results: list = [None] * len(files)
    bar = tqdm(total=len(files), desc="indexing", unit="img", disable=not progress, dynamic_ncols=True)

    async def one(i: int) -> None:
        import anyio.to_thread

        rel, _ = files[i]
        try:
            data = await anyio.to_thread.run_sync((folder / rel).read_bytes)
            result = await pipeline([data], schemes=[scheme], top_k=1, all_or_nothing=False)
            image = result.images[0]
            if image.error is not None:
                results[i] = str(image.error)
            else:
                s = image.schemes[scheme]
                thumb = (await anyio.to_thread.run_sync(thumbnail, image.square)) if thumbnails else b""
                results[i] = (s.features, s.top[0].label, thumb)
        except OSError as exc:
            results[i] = f"cannot read: {exc.strerror or exc}"
        bar.update()

    async def run() -> None:
        queue = iter(range(len(files)))

        async def worker() -> None:
            for i in queue:
                await one(i)

        await pipeline.runner.start()
        try:
            await asyncio.gather(*(worker() for _ in range(backend.batch_size * 2 + backend.workers)))
        finally:
            await pipeline.runner.stop()

    start = time.perf_counter()
    asyncio.run(run())
    seconds = time.perf_counter() - start
    bar.close()
    keep = [i for i, r in enumerate(results) if isinstance(r, tuple)]
    failed = [(files[i][0], r) for i, r in enumerate(results) if not isinstance(r, tuple)]
    vectors = (np.stack([results[i][0] for i in keep]).astype(np.float32) if keep
               else np.zeros((0, backend.model.features_dim), np.float32))
    return Indexed([files[i][0] for i in keep], [files[i][1] for i in keep], [results[i][1] for i in keep],
                   vectors, [results[i][2] for i in keep], failed, seconds)


def publish(version: ModelVersion, previous: Generation | None, new: Indexed, source: str, scheme: str,
            exact_limit: int, log) -> Generation:
    """The next generation: `previous`'s images (None: none) and the new ones, its index, its thumbnails."""
    meta = version.metadata
    features = meta.onnx.features
    items: list[GalleryItem] = []
    parts: list[np.ndarray] = []
    blobs: list[bytes] = []
    sources: list[str] = []
    offset = 0
    if previous is not None:
        old = previous.manifest
        parts.append(np.load(previous.file(old.vectors), allow_pickle=False))
        data = previous.file(old.thumbnails).read_bytes() if old.thumbnails else b""
        blobs.append(data)
        offset = len(data)
        items.extend(old.items)
        sources.extend(old.sources)
    if source not in sources:
        sources.append(source)
    src = sources.index(source)
    for rel, label, predicted, thumb in zip(new.files, new.labels, new.predicted, new.thumbnails, strict=True):
        items.append(GalleryItem(file=rel, label=label, predicted=predicted, source=src,
                                 thumbnail=(offset, len(thumb)) if thumb else (0, 0)))
        blobs.append(thumb)
        offset += len(thumb)
    parts.append(new.vectors)
    vectors = np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0], np.float32)
    store = GalleryStore(version.path)
    with store.new_generation() as staging:
        np.save(staging.path / "vectors.npy", vectors, allow_pickle=False)
        thumbs = b"".join(blobs)
        if thumbs:
            (staging.path / "thumbnails.bin").write_bytes(thumbs)
        start = time.perf_counter()
        index = write_index(vectors, staging.path, exact_limit=exact_limit)
        if index.kind != "flat":
            log(f"HNSW index of {len(vectors):,} vectors built in {time.perf_counter() - start:.1f} s; recall@10 "
                f"against exact search on {index.recall_queries} of its own vectors: {index.recall_at_10:.4f}")
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return staging.commit(lambda number, digests: GalleryManifest(
            generation=number, model=meta.name, version=meta.version, created_at=created, count=len(items),
            dim=int(vectors.shape[1]), features=features.layer or features.name, crops=scheme, items=tuple(items),
            index=index, thumbnails="thumbnails.bin" if thumbs else None, sources=tuple(sources), files=digests))


def _version(args) -> ModelVersion:
    try:
        version = ModelStore(args.model_store).resolve(args.model, args.version)
    except StoreError as exc:
        raise UsageError(str(exc)) from exc
    if version.metadata.onnx.features is None:
        raise UsageError(f"{version.name} v{version.version} has no features output (metadata onnx.features): it was "
                         "exported before galleries existed; export it again with alexnet-export")
    return version


def cmd_index(args, adding: bool) -> int:
    from service.evaluation.backends import InProcessBackend

    version = _version(args)
    gallery = GalleryStore(version.path)
    previous = gallery.load() if adding else None
    if adding and previous is None:
        raise UsageError(f"{version.name} v{version.version} has no gallery to add to: use alexnet-index build")
    scheme = previous.manifest.crops if previous is not None else (args.crops or version.metadata.preprocessing.crops)
    if previous is not None and args.crops and args.crops != scheme:
        raise UsageError(f"the gallery was built with crops={scheme}; its new images must be too")
    files = find_images(args.dir)
    source = args.dir.resolve().name
    if previous is not None:
        have = {(previous.manifest.sources[i.source], i.file) for i in previous.manifest.items}
        files = [f for f in files if (source, f[0]) not in have]
        if not files:
            print(f"nothing to add: every image of {args.dir} is in generation {previous.number} already")
            return 0
    if not files:
        raise UsageError(f"no images in {args.dir}")
    backend = InProcessBackend(args.model_store, version.name, version.version, providers=args.providers,
                               workers=args.workers, batch_size=args.batch_size)
    backend.start()
    print(f"{version.name} v{version.version} on {backend.model.provider}: {len(files)} images of {args.dir}, "
          f"crops={scheme}, features {version.metadata.onnx.features.layer} "
          f"({version.metadata.onnx.features.dim}-d)", flush=True)
    new = index_folder(backend, args.dir, files, scheme, not args.no_thumbnails, not args.no_progress)
    for rel, why in new.failed[:10]:
        print(f"skipped {rel}: {why}", file=sys.stderr)
    if not new.files:
        print("no image could be indexed", file=sys.stderr)
        return RUN_ERROR
    print(f"indexed {len(new.files)} images in {new.seconds:.1f} s ({len(new.files) / new.seconds:.1f} images/s)"
          + (f"; {len(new.failed)} skipped" if new.failed else ""), flush=True)
    generation = publish(version, previous, new, source, scheme, args.exact_limit, print)
    m = generation.manifest
    print(f"published gallery generation {m.generation} of {version.name} v{version.version}: {m.count} images, "
          f"{m.index.kind} search ({generation.path})")
    return 0


def cmd_info(args) -> int:
    version = ModelStore(args.model_store).resolve(args.model, args.version)
    store = GalleryStore(version.path)
    numbers = store.generations()
    if not numbers:
        print(f"{version.name} v{version.version} has no gallery")
        return 0
    newest = store.load()
    m = newest.manifest
    labels = sorted({i.label for i in m.items if i.label})
    print(f"{version.name} v{version.version}: generations {numbers}; the newest ({m.generation}, {m.created_at}) "
          f"holds {m.count} images of {len(m.sources)} folder(s) {list(m.sources)}, {m.dim}-d {m.features}, "
          f"crops={m.crops}, {m.index.library} {m.index.kind}"
          + (f" (recall@10 {m.index.recall_at_10})" if m.index.recall_at_10 is not None else "")
          + (f"; {len(labels)} labels" if labels else ""))
    return 0


def cmd_evaluate(args) -> int:
    version = ModelStore(args.model_store).resolve(args.model, args.version)
    generation = GalleryStore(version.path).load()
    if generation is None:
        raise UsageError(f"{version.name} v{version.version} has no gallery")
    m = generation.manifest
    vectors = np.load(generation.file(m.vectors), allow_pickle=False)
    score, counted = precision_at_k(vectors, [i.label for i in m.items], args.k)
    if not counted:
        raise UsageError("the gallery has no labelled images (ImageNet layout: DIR/<class>/<image>)")
    print(f"precision@{args.k} (leave-one-out, exact search) over {counted} labelled images of generation "
          f"{m.generation}: {score:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alexnet-index", description="A version's image gallery for nearest-neighbour "
                                "search by its features (the paper's Fig. 4).")
    sub = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model", required=True, metavar="NAME", help="model in the store")
        q.add_argument("--version", type=int, metavar="N", help="its version (default: the newest)")
        q.add_argument("--model-store", type=Path, default=Path("model_store"), metavar="DIR",
                       help="model store root (default: model_store)")

    for name, text in (("build", "index a folder as a new gallery generation (replacing what the gallery holds)"),
                       ("add", "a new generation with the gallery's images and a folder's new ones")):
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("dir", type=Path, metavar="DIR", help="images (ImageNet layout: labels from the folders)")
        common(q)
        q.add_argument("--crops", choices=CROP_SCHEMES, help="patches per image (default: the model's scheme)")
        q.add_argument("--exact-limit", type=int, default=EXACT_LIMIT, metavar="N",
                       help=f"exact search up to N images, an HNSW index above (default {EXACT_LIMIT:,})")
        q.add_argument("--no-thumbnails", action="store_true", help="store no 96×96 thumbnails")
        q.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per model run (default 8)")
        q.add_argument("--workers", type=int, default=None, metavar="N", help="decode threads (default: CPUs)")
        q.add_argument("--providers", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                       metavar="P1,P2", help="ONNX Runtime providers (default: CUDA when usable, then CPU)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = sub.add_parser("info", help="the gallery's generations")
    common(q)
    q = sub.add_parser("evaluate", help="leave-one-out precision@k over the labelled images")
    common(q)
    q.add_argument("-k", type=int, default=5, help="neighbours per image (default 5)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("build", "add"):
            return cmd_index(args, adding=args.command == "add")
        if args.command == "info":
            return cmd_info(args)
        return cmd_evaluate(args)
    except (UsageError, StoreError) as exc:
        print(f"alexnet-index: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except GalleryError as exc:
        print(f"alexnet-index: error: {exc}", file=sys.stderr)
        return RUN_ERROR


if __name__ == "__main__":
    sys.exit(main())
