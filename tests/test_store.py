"""The model-store contract: complete versions only, never overwritten, metadata validated on read."""

from __future__ import annotations

import json
import threading

import pytest

from alexnet_store import ModelMetadata, ModelNotFoundError, ModelStore, StoreError
from alexnet_store.store import METADATA_FILE


def test_metadata_round_trip(exported):
    _, version, _ = exported
    text = version.metadata.to_json()
    again = ModelMetadata.from_json(text)
    assert again == version.metadata
    assert again.num_classes == 10
    assert again.preprocessing.crops == "ten"
    assert again.parity is not None and again.parity.max_rel_diff <= 1e-4


def _trained(**lighting) -> dict:
    return {"dataset": "digits", "epochs": 1, "train_images": 4, "val_images": 2, "lighting": lighting}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("labels"), "missing field 'labels'"),
        (lambda d: d["preprocessing"].update(crop_size="224"), "preprocessing.crop_size: expected int"),
        (lambda d: d["preprocessing"].update(crops="seven"), "is not one of"),
        (lambda d: d["labels"].pop(), "9 labels but the architecture has 10"),
        (lambda d: d.update(format_version=99), "newer than this code understands"),
        (lambda d: d["preprocessing"].update(input_channels=1), "3 mean and 3 std values for 1 input channel"),
        (lambda d: d["preprocessing"].update(input_channels=2, mean=[0, 0], std=[1, 1]), "expected 1 \\(luma\\)"),
        (lambda d: d["preprocessing"].update(std=[0.2, 0.0, 0.2]), "std values must be positive"),
        (lambda d: d.update(training=_trained(eigen="computed", alpha_std=0.1, eigval=[0.2, 0.01],
                                              eigvec=[[1, 0, 0], [0, 1, 0], [0, 0, 1]])), "3 eigenvalues and a 3×3"),
        (lambda d: d.update(training=_trained(eigen="fancy", alpha_std=0.1)), "training.lighting.eigen: 'fancy'"),
    ],
)
def test_metadata_errors_name_the_field(exported, mutate, message):
    _, version, _ = exported
    data = json.loads(version.metadata.to_json())
    mutate(data)
    with pytest.raises(ValueError, match=message):
        ModelMetadata.from_dict(data)


def test_versions_are_numbered_and_never_overwritten(exported, tmp_path):
    _, source, _ = exported
    store = ModelStore(tmp_path)
    first = store.publish_copy(source, "copy")
    first_bytes = (first.path / METADATA_FILE).read_bytes()
    second = store.publish_copy(source, "copy")
    assert (first.version, second.version) == (1, 2)
    assert (first.path / METADATA_FILE).read_bytes() == first_bytes
    assert store.resolve("copy").version == 2
    assert store.resolve("copy", 1).path == first.path


def test_newest_of_a_precision(exported, tmp_path):
    _, source, _ = exported
    store = ModelStore(tmp_path)

    def publish(precision: str):
        with store.new_version("copy") as staging:
            (staging.path / "model.onnx").write_bytes(b"stand-in")  # newest() reads the metadata only
            meta = source.metadata.to_dict()
            return staging.commit(lambda v: ModelMetadata.from_dict({**meta, "name": "copy", "version": v,
                                                                      "precision": precision}))

    publish("fp32")
    fp32 = publish("fp32")
    int8 = publish("int8")
    assert (fp32.version, int8.version) == (2, 3)
    assert store.newest("copy", "fp32").path == fp32.path  # skips the newer int8 version
    assert store.newest("copy", "int8").path == int8.path
    with pytest.raises(StoreError, match="no int8 version"):
        ModelStore(tmp_path / "other").newest("copy", "int8")


def test_concurrent_publishers_get_distinct_versions(exported, tmp_path):
    _, source, _ = exported
    store = ModelStore(tmp_path)
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.publish_copy(source, "copy").version))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [1, 2, 3, 4]


def test_failed_export_leaves_nothing(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), store.new_version("broken") as staging:
        (staging.path / "model.onnx").write_bytes(b"half")
        raise RuntimeError("boom")
    assert store.versions("broken") == []
    assert [p.name for p in (tmp_path / "broken").iterdir() if not p.name.startswith(".lock")] == []


def test_squatting_directory_is_skipped_not_overwritten(exported, tmp_path):
    _, source, _ = exported
    store = ModelStore(tmp_path)
    (tmp_path / "copy" / "1").mkdir(parents=True)  # someone made an empty "1" by hand
    published = store.publish_copy(source, "copy")
    assert published.version == 2
    assert list((tmp_path / "copy" / "1").iterdir()) == []


def test_resolve_errors_are_clear(exported, tmp_path):
    root, _, _ = exported
    store = ModelStore(root)
    assert store.resolve().name == "testnet"  # the only model: no name needed
    with pytest.raises(ModelNotFoundError, match=r"no model named 'nope'.*testnet"):
        store.resolve("nope")
    with pytest.raises(ModelNotFoundError, match="no version 7"):
        store.resolve("testnet", 7)
    with pytest.raises(StoreError, match="invalid model name"):
        store.resolve("../etc")
    with pytest.raises(ModelNotFoundError, match="holds 0 models"):
        ModelStore(tmp_path).resolve()


def test_checksum_mismatch_is_detected(exported, tmp_path):
    _, source, _ = exported
    store = ModelStore(tmp_path)
    copy = store.publish_copy(source, "copy")
    copy.verify()
    copy.onnx_path.unlink()  # a hard link to the session's model: replace it before writing to it
    copy.onnx_path.write_bytes(source.onnx_path.read_bytes())
    with open(copy.onnx_path, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(StoreError, match="sha256"):
        store.resolve("copy").verify()


def test_publish_copy_links_verifies_and_renames(exported, tmp_path):
    _, source, _ = exported
    store = ModelStore(tmp_path)
    copy = store.publish_copy(source)
    assert (copy.name, copy.version) == (source.name, 1) and copy.metadata.version == 1
    assert copy.onnx_path.stat().st_ino == source.onnx_path.stat().st_ino  # hard-linked, not copied
    copy.verify()
    fake = ModelStore(tmp_path / "fake")
    with fake.new_version("y") as staging:
        (staging.path / "model.onnx").write_bytes(b"not the bytes the checksum describes")
        bad = staging.commit(lambda v: ModelMetadata.from_dict({**source.metadata.to_dict(), "name": "y",
                                                                "version": v}))
    with pytest.raises(StoreError, match="does not match metadata"):
        store.publish_copy(bad, "z")
    assert store.versions("z") == [] and not any((tmp_path / "z").glob(".staging-*"))


def test_metadata_of_earlier_stores_and_of_1_channel_models(exported):
    """A metadata.json written before input_channels existed means RGB; a 1-channel model has one mean and std."""
    _, version, _ = exported
    data = json.loads(version.metadata.to_json())
    del data["preprocessing"]["input_channels"]
    old = ModelMetadata.from_dict(data)
    assert old.preprocessing.input_channels == 3 and old.architecture.grouped is True
    data["preprocessing"].update(input_channels=1, mean=[0.286], std=[0.353])
    del data["architecture"]["grouped"], data["architecture"]["lrn"]  # a network other than the paper's
    grey = ModelMetadata.from_dict(data)
    assert grey.preprocessing.mean == (0.286,) and grey.architecture.grouped is None


def test_invalid_metadata_is_never_published(exported, tmp_path):
    _, source, _ = exported
    store = ModelStore(tmp_path)
    bad = {**source.metadata.to_dict(), "name": "bad"}
    bad["preprocessing"] = {**bad["preprocessing"], "input_channels": 1}  # three means for one channel
    with pytest.raises(StoreError, match="refusing to publish bad v1: preprocessing has 3 mean"), \
            store.new_version("bad") as staging:
        (staging.path / "model.onnx").write_bytes(source.onnx_path.read_bytes())
        staging.commit(lambda v: ModelMetadata(**{**source.metadata.__dict__, "name": "bad", "version": v,
                                                  "preprocessing": type(source.metadata.preprocessing)(
                                                      **bad["preprocessing"])}))
    assert store.names() == [] or store.versions("bad") == []
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".onnx"]
