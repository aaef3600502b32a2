"""A version's image gallery: ``<root>/<name>/<version>/gallery/<generation>/``, generations never overwritten.

The paper's Fig. 4 (section 6.1) finds, for a test image, the training images whose last-hidden-layer vectors are
nearest in Euclidean distance. A gallery is those vectors for a folder of images, computed by one model version
(`alexnet-index build`, service/gallery_cli.py) and stored beside it, so it is versioned with the model whose
features it holds: a new model version starts without one.

Every change is a new **generation**, staged in a hidden ``gallery/.staging-*`` folder and renamed into place under
the gallery's lock, like a new model version (alexnet_store/store.py): ``alexnet-index add`` writes generation N+1
with the vectors of N and the new images', and never touches N. Readers take the highest complete generation (a
folder with ``gallery.json``); a crash leaves at most a hidden staging folder. The gallery is not part of the
version's checksum (``onnx.sha256`` covers the ONNX file only), so adding one never breaks verification, and the
repository's change detection (the version folder's files) does not see it: the service notices a new generation
itself (service/gallery.py).

Pure standard library: the files a generation holds besides ``gallery.json`` (the vectors as ``.npy``, the vector
library's index, the thumbnails) are written into the staging folder by the caller; this module numbers, checks
and publishes them, and records each file's sha256 in the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alexnet_store.metadata import MetadataError, _build
from alexnet_store.store import (
    StoreError,
    _fsync_dir,
    _fsync_file,
    _locked,
    _numeric_children,
    _write_durably,
    sha256_of,
)

GALLERY_DIR = "gallery"
MANIFEST_FILE = "gallery.json"
GALLERY_FORMAT = 1


@dataclass(frozen=True)
class GalleryItem:
    """One indexed image: `file` its path relative to the folder it was indexed from (never an absolute path),
    `label` its class (the name of the folder it is in, ImageNet layout; "" at the top level), `predicted` the
    model's top-1 class name for it when it was indexed, `source` which indexed folder it came from (its position
    in `GalleryManifest.sources`), `thumbnail` the byte range of its JPEG thumbnail in the generation's thumbnails
    file ((0, 0): none)."""

    file: str
    label: str = ""
    predicted: str = ""
    source: int = 0
    thumbnail: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class GalleryIndex:
    """The vector index a generation was built with: `library` (``faiss``), `kind` (``flat``: exact search, or
    ``hnsw``: approximate, above `GalleryManifest`'s exact limit), its `file` in the generation (None: the service
    builds it from the vectors at load, e.g. flat), the `params` it was built with and `recall_at_10`, measured at
    build by searching the gallery's own vectors against exact search (None for an exact index)."""

    library: str
    kind: str
    file: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    recall_at_10: float | None = None
    recall_queries: int = 0


@dataclass(frozen=True)
class GalleryManifest:
    """``gallery.json``: what a generation holds. `vectors` is the float32 ``[count, dim]`` ``.npy`` file of the
    images' features (the model's `onnx.features`, averaged over the `crops` scheme's patches), row i for item i;
    `files` the sha256 of every data file, checked by readers."""

    generation: int
    model: str
    version: int
    created_at: str
    count: int
    dim: int
    features: str  # the layer, in words (metadata onnx.features.layer, else its tensor name)
    crops: str
    items: tuple[GalleryItem, ...]
    index: GalleryIndex
    vectors: str = "vectors.npy"
    thumbnails: str | None = None
    sources: tuple[str, ...] = ()  # the indexed folders' names (not their paths)
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = GALLERY_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> GalleryManifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{MANIFEST_FILE} is not valid JSON: {exc}") from exc
        manifest = _build(cls, data, "gallery")
        if manifest.format_version > GALLERY_FORMAT:
            raise MetadataError(f"gallery format_version {manifest.format_version} is newer than this code "
                                f"understands ({GALLERY_FORMAT})")
        if len(manifest.items) != manifest.count or manifest.dim < 1:
            raise MetadataError(f"gallery says {manifest.count} images but lists {len(manifest.items)}, dim "
                                f"{manifest.dim}")
        return manifest


@dataclass(frozen=True)
class Generation:
    path: Path
    manifest: GalleryManifest

    @property
    def number(self) -> int:
        return self.manifest.generation

    def file(self, name: str) -> Path:
        return self.path / name

    def verify(self) -> None:
        """StoreError if a data file is missing or differs from its sha256 in the manifest."""
        for name, digest in self.manifest.files.items():
            path = self.path / name
            if not path.is_file():
                raise StoreError(f"gallery generation {self.number}: {name} is missing")
            if sha256_of(path) != digest:
                raise StoreError(f"gallery generation {self.number}: {name} does not match its sha256")


class GalleryStaging:
    """A generation being written: files go into `path`; `commit` numbers it and renames it into place."""

    def __init__(self, gallery: GalleryStore, path: Path) -> None:
        self.gallery = gallery
        self.path = path
        self.committed: Generation | None = None

    def commit(self, make_manifest: Callable[[int, dict[str, str]], GalleryManifest]) -> Generation:
        """Take the next generation number, write gallery.json (`make_manifest(number, {file: sha256})`) and
        rename the folder into place."""
        root = self.gallery.root
        digests = {p.name: sha256_of(p) for p in sorted(self.path.iterdir()) if p.is_file()}
        with _locked(root / ".lock"):
            number = max(_numeric_children(root), default=0) + 1
            manifest = make_manifest(number, digests)
            if manifest.generation != number:
                raise StoreError("the manifest's generation does not match the one being committed")
            try:
                GalleryManifest.from_json(manifest.to_json())
            except MetadataError as exc:
                raise StoreError(f"refusing to publish gallery generation {number}: {exc}") from exc
            _write_durably(self.path / MANIFEST_FILE, manifest.to_json().encode())
            for child in self.path.iterdir():
                _fsync_file(child)
            os.chmod(self.path, 0o755)
            target = root / str(number)
            os.rename(self.path, target)
            _fsync_dir(root)
        self.committed = Generation(target, manifest)
        return self.committed


class GalleryStore:
    """The gallery of one version folder."""

    def __init__(self, version_path: str | os.PathLike[str]) -> None:
        self.version_path = Path(version_path)
        self.root = self.version_path / GALLERY_DIR

    def generations(self) -> list[int]:
        """Complete generations (folders with a manifest), ascending."""
        return sorted(g for g in _numeric_children(self.root) if (self.root / str(g) / MANIFEST_FILE).is_file())

    def newest(self) -> int | None:
        """The newest generation's number (a directory listing and a stat each: cheap enough per request)."""
        numbers = self.generations()
        return numbers[-1] if numbers else None

    def load(self, number: int | None = None) -> Generation | None:
        """A generation's manifest (the newest by default); None when the version has no gallery."""
        number = self.newest() if number is None else number
        if number is None:
            return None
        path = self.root / str(number)
        try:
            manifest = GalleryManifest.from_json((path / MANIFEST_FILE).read_text())
        except FileNotFoundError as exc:
            raise StoreError(f"gallery generation {number} does not exist") from exc
        except MetadataError as exc:
            raise StoreError(f"gallery generation {number}: {exc}") from exc
        if manifest.generation != number:
            raise StoreError(f"gallery folder {number} holds generation {manifest.generation}")
        return Generation(path, manifest)

    @contextmanager
    def new_generation(self) -> Iterator[GalleryStaging]:
        """Stage a new generation; on any error nothing becomes visible and the staging folder is removed."""
        if not (self.version_path / "metadata.json").is_file():
            raise StoreError(f"{self.version_path} is not a model version (no metadata.json)")
        self.root.mkdir(exist_ok=True)
        staging = GalleryStaging(self, Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root)))
        try:
            yield staging
        finally:
            if staging.committed is None:
                shutil.rmtree(staging.path, ignore_errors=True)
