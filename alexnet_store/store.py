"""Versioned, never-overwritten model directories: ``<root>/<name>/<version>/``.

A new version is staged in a hidden sibling directory and renamed into place under a lock, so
readers only ever see complete versions, two concurrent exports get different numbers, and a crash
leaves at most a hidden ``.staging-*`` directory that readers ignore.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alexnet_store.metadata import MetadataError, ModelMetadata

METADATA_FILE = "metadata.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StoreError(RuntimeError):
    """The store cannot be used as asked (bad name, broken version, checksum mismatch...)."""


class ModelNotFoundError(StoreError):
    """No such model or version in the store."""


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise StoreError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    """A complete version directory and its parsed metadata."""

    path: Path
    metadata: ModelMetadata

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return self.metadata.version

    @property
    def onnx_path(self) -> Path:
        return self.path / self.metadata.onnx.file

    def verify(self) -> None:
        """Raise StoreError if the ONNX file is missing or differs from the checksum in the metadata."""
        if not self.onnx_path.is_file():
            raise StoreError(f"{self.path}: {self.metadata.onnx.file} is missing")
        actual = sha256_of(self.onnx_path)
        if actual != self.metadata.onnx.sha256:
            raise StoreError(
                f"{self.onnx_path}: sha256 {actual} does not match metadata ({self.metadata.onnx.sha256}); "
                "the file is corrupt or was changed after export"
            )


class Staging:
    """A version being written: files go into `path`; `commit` numbers it and moves it into place."""

    def __init__(self, store: ModelStore, name: str, path: Path) -> None:
        self.store = store
        self.name = name
        self.path = path
        self.committed: ModelVersion | None = None

    def commit(self, make_metadata: Callable[[int], ModelMetadata]) -> ModelVersion:
        """Take the next free version number, write metadata.json for it and rename into place."""
        model_dir = self.store.root / self.name
        with _locked(model_dir / ".lock"):
            version = max(self.store.versions(self.name), default=0) + 1
            target = model_dir / str(version)
            if target.exists():  # an empty or foreign directory squatting on the number: never touch it
                version = max(version, *_numeric_children(model_dir)) + 1
                target = model_dir / str(version)
            metadata = make_metadata(version)
            if metadata.version != version or metadata.name != self.name:
                raise StoreError("metadata name/version do not match the version being committed")
            try:  # what readers will check, checked before anything is published
                ModelMetadata.from_json(metadata.to_json())
            except MetadataError as exc:
                raise StoreError(f"refusing to publish {self.name} v{version}: {exc}") from exc
            _write_durably(self.path / METADATA_FILE, metadata.to_json().encode())
            for child in self.path.iterdir():
                _fsync_file(child)
            os.chmod(self.path, 0o755)  # mkdtemp makes it 0700; readers in containers run as other users
            os.rename(self.path, target)
            _fsync_dir(model_dir)
        self.committed = ModelVersion(target, metadata)
        return self.committed


class ModelStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name)
                      and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        """Complete versions of `name` (directories with a metadata file), ascending."""
        model_dir = self.root / validate_name(name)
        return sorted(v for v in _numeric_children(model_dir) if (model_dir / str(v) / METADATA_FILE).is_file())

    def is_empty(self) -> bool:
        return not self.names()

    def resolve(self, name: str | None = None, version: int | None = None) -> ModelVersion:
        """Find a version: the newest unless `version` is given; `name` may be omitted if only one model."""
        if name is None:
            names = self.names()
            if len(names) != 1:
                found = ", ".join(names) if names else "none"
                raise ModelNotFoundError(
                    f"model store {self.root} holds {len(names)} models ({found}); choose one by name"
                )
            name = names[0]
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(
                f"no model named {name!r} in {self.root} (models there: {', '.join(self.names()) or 'none'})"
            )
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version} in {self.root} (versions: {versions})"
            )
        return self.load(self.root / name / str(version))

    def newest(self, name: str, precision: str) -> ModelVersion:
        """The newest version of `name` with this precision (int8 versions sit beside fp32 ones, numbered alike)."""
        for number in reversed(self.versions(name)):
            version = self.resolve(name, number)
            if version.metadata.precision == precision:
                return version
        raise ModelNotFoundError(f"model {name!r} has no {precision} version in {self.root}")

    @staticmethod
    def load(path: Path) -> ModelVersion:
        meta_path = path / METADATA_FILE
        try:
            metadata = ModelMetadata.from_json(meta_path.read_text())
        except FileNotFoundError as exc:
            raise StoreError(f"{path}: no {METADATA_FILE}") from exc
        except MetadataError as exc:
            raise StoreError(f"{meta_path}: {exc}") from exc
        return ModelVersion(path, metadata)

    def publish_copy(self, source: ModelVersion, name: str | None = None) -> ModelVersion:
        """Publish `source` (from this or another store) as the next version of `name` (default: its own name),
        through the same staging and atomic rename as an export. The ONNX file is hard-linked where the two
        stores share a file system (it is never written to again) and copied otherwise; the checksum is
        verified first, so a damaged source is never published."""
        source.verify()
        with self.new_version(name or source.name) as staging:
            target = staging.path / source.metadata.onnx.file
            try:
                os.link(source.onnx_path, target)
            except OSError:
                shutil.copyfile(source.onnx_path, target)
            return staging.commit(lambda v: dataclasses.replace(source.metadata, name=staging.name, version=v))

    @contextmanager
    def new_version(self, name: str) -> Iterator[Staging]:
        """Stage a new version of `name`; on any error nothing becomes visible and the staging is removed."""
        model_dir = self.root / validate_name(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Staging(self, name, Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir)))
        try:
            yield staging
        finally:
            if staging.committed is None:
                shutil.rmtree(staging.path, ignore_errors=True)


def _numeric_children(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return [int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()]


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_file(path: Path) -> None:
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
