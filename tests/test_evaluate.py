"""`alexnet-eval`: both layouts, both backends, failures that do not stop a run, and the numbers themselves.

The reference is computed independently: torchvision's TenCrop/CenterCrop pipelines and the PyTorch model of
the `exported` fixture. The validation folder is built from the shared ImageNet photos with targets chosen
from the reference's own ranking, so top-1 and top-5 accuracy are neither 0 nor 1 and differ between them.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.server import start_server, stop_server

from alexnet_store import Label
from service.evaluation import cli
from service.evaluation.backends import BackendError, HttpBackend, InProcessBackend, TopK
from service.evaluation.cli import run_evaluation
from service.evaluation.data import EvalDataError, Sample, load_eval_set

N_IMAGES = 12
REPORT_KEYS = {"model", "backend", "url", "dataset", "crops", "failed", "seconds"}
SCHEME_KEYS = {"images", "top1", "top5", "top1_error", "top5_error", "images_per_second", "per_class"}


@dataclass(frozen=True)
class Reference:
    root: Path  # model store
    labels: tuple[Label, ...]
    images: list[Path]  # the photos, in reference order
    targets: list[int]
    top5: dict[str, np.ndarray]  # scheme → [N, 5] class indices from PyTorch
    val_dir: Path  # ImageNet layout, with two broken files besides the photos

    def accuracy(self, scheme: str) -> tuple[float, float]:
        t = np.asarray(self.targets)
        top5 = self.top5[scheme]
        return float(np.mean(top5[:, 0] == t)), float(np.mean((top5 == t[:, None]).any(axis=1)))


def _folder_name(label: Label, i: int) -> str:
    return label.id if i % 2 == 0 else label.name  # classes by id (wnid) and by name, both accepted


@pytest.fixture(scope="module")
def reference(exported, project_photos, tmp_path_factory) -> Reference:
    import torch
    from PIL import Image, ImageOps

    from training.presets import center_transform, ten_crop_transform

    root, version, model = exported
    pre = version.metadata.preprocessing
    # photos whose shorter side is < 512 px: JPEG draft decoding (which the service uses on larger ones) is
    # then a no-op, so torchvision on a full decode is an exact reference
    photos = [p for p in project_photos if min(Image.open(p).size) < 2 * pre.resize_size][:N_IMAGES]
    ten = ten_crop_transform(pre.mean, pre.std, pre.resize_size, pre.crop_size)
    center = center_transform(pre.mean, pre.std, pre.resize_size, pre.crop_size)
    top5 = {}
    ranks = {}
    with torch.no_grad():
        for scheme, transform in (("ten", ten), ("center", center)):
            batch = [transform(ImageOps.exif_transpose(Image.open(p)).convert("RGB")) for p in photos]
            x = torch.stack(batch) if scheme == "ten" else torch.stack(batch)[:, None]
            n, c = x.shape[:2]
            probs = torch.softmax(model(x.flatten(0, 1)), dim=-1).view(n, c, -1).mean(dim=1).numpy()
            ranks[scheme] = np.argsort(-probs, axis=1, kind="stable")
            top5[scheme] = ranks[scheme][:, :5]
    # targets: the ten-crop favourite for the first third, its 3rd choice for the next, its last for the rest
    order = ranks["ten"]
    targets = [int(order[i, 0 if i < N_IMAGES // 3 else 2 if i < 2 * N_IMAGES // 3 else -1])
               for i in range(len(photos))]
    labels = version.metadata.labels
    val_dir = tmp_path_factory.mktemp("val")
    for photo, target in zip(photos, targets, strict=True):
        folder = val_dir / _folder_name(labels[target], target)
        folder.mkdir(exist_ok=True)
        shutil.copy(photo, folder / photo.name)
    broken = val_dir / _folder_name(labels[targets[0]], targets[0])
    (broken / "truncated.jpg").write_bytes(photos[0].read_bytes()[:2000])
    (broken / "not-an-image.jpg").write_text("hello")
    (broken / "notes.txt").write_text("not an image suffix: ignored")
    return Reference(root, labels, photos, targets, top5, val_dir)


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main([*args, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_matches_an_independent_pytorch_computation(reference, tmp_path, capsys):
    report_path, csv_path, png_path = tmp_path / "r.json", tmp_path / "c.csv", tmp_path / "p.png"
    code, out, err = _run_cli([str(reference.val_dir), "--model-store", str(reference.root),
                               "--report", str(report_path), "--confusion", str(csv_path),
                               "--plot", str(png_path), "--workers", "2", "--batch-size", "5",
                               "--providers", "CPUExecutionProvider"], capsys)
    assert code == 0, err
    report = json.loads(report_path.read_text())

    # keys exactly as documented
    assert set(report) == REPORT_KEYS
    assert set(report["crops"]) == {"ten", "center"}
    for scheme in ("ten", "center"):
        assert set(report["crops"][scheme]) == SCHEME_KEYS
    assert set(report["model"]) == {"name", "version", "precision", "provider"}
    assert set(report["failed"]) == {"count", "files"}
    assert report["model"] == {"name": "testnet", "version": 1, "precision": "fp32",
                               "provider": "CPUExecutionProvider"}
    assert report["backend"] == "in-process" and report["url"] is None
    assert report["dataset"]["layout"] == "imagenet" and report["dataset"]["samples"] == N_IMAGES + 2

    # the numbers, against PyTorch + torchvision
    for scheme in ("ten", "center"):
        m = report["crops"][scheme]
        top1, top5 = reference.accuracy(scheme)
        assert m["images"] == N_IMAGES
        assert m["top1"] == pytest.approx(top1) and m["top5"] == pytest.approx(top5)
        assert m["top1_error"] == pytest.approx(1 - top1) and m["top5_error"] == pytest.approx(1 - top5)
        assert m["images_per_second"] > 0
        t = np.asarray(reference.targets)
        for cls in set(reference.targets):
            entry = m["per_class"][reference.labels[cls].id]
            rows = t == cls
            assert entry["name"] == reference.labels[cls].name
            assert entry["images"] == rows.sum()
            assert entry["top1"] == pytest.approx(np.mean(reference.top5[scheme][rows, 0] == cls))
        assert sum(e["images"] for e in m["per_class"].values()) == N_IMAGES
    assert report["crops"]["ten"]["top1"] == pytest.approx(N_IMAGES // 3 / N_IMAGES)  # by construction
    assert 0 < report["crops"]["ten"]["top5"] < 1

    # broken files are reported, with reasons, and did not stop the run; notes.txt is not an image
    assert report["failed"]["count"] == 2
    assert {Path(f["path"]).name for f in report["failed"]["files"]} == {"truncated.jpg", "not-an-image.jpg"}
    assert all(f["reason"] for f in report["failed"]["files"])
    assert "2 file(s) failed" in out and "truncated.jpg" in err

    # the table, the confusion matrix and the plot
    assert "10-crop" in out and "centre crop" in out and f"{report['crops']['ten']['top1']:.2%}" in out
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["crops", "true_class", *[lab.id for lab in reference.labels]]
    ten_rows = [r for r in rows[1:] if r[0] == "ten"]
    assert len(ten_rows) == len(reference.labels)
    assert sum(int(v) for r in ten_rows for v in r[2:]) == N_IMAGES
    assert sum(int(r[2 + i]) for i, r in enumerate(ten_rows)) == round(report["crops"]["ten"]["top1"] * N_IMAGES)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _flat_copy(reference: Reference, directory: Path) -> dict[str, int]:
    """The photos as ILSVRC2012_val_*.JPEG; returns file name → target."""
    directory.mkdir()
    names = {}
    for n, (photo, target) in enumerate(zip(reference.images, reference.targets, strict=True), start=1):
        name = f"ILSVRC2012_val_{n:08d}.JPEG"
        shutil.copy(photo, directory / name)
        names[name] = target
    return names


def test_flat_ilsvrc_layouts_give_the_same_samples(reference, tmp_path):
    labels = reference.labels
    flat = tmp_path / "flat"
    expected = _flat_copy(reference, flat)
    # devkit ground truth: IDs in a "meta.mat" order that is NOT the model's order (here: reversed)
    id_of = {cls: len(labels) - cls for cls in range(len(labels))}
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{id_of[expected[name]]}\n" for name in sorted(expected)))
    synsets = tmp_path / "map_clsloc.txt"  # 'wnid ID name' lines, in any order
    synsets.write_text("".join(f"{labels[c].id} {id_of[c]} {labels[c].name}\n" for c in range(len(labels))))
    loc = flat / "LOC_val_solution.csv"  # found in the folder without --ground-truth
    loc.write_text("ImageId,PredictionString\n" + "".join(
        f"{name.split('.')[0]},{labels[t].id} 1 2 3 4 {labels[t].id} 5 6 7 8\n" for name, t in expected.items()))

    def as_dict(samples: list[Sample]) -> dict[str, int]:
        return {s.path.name: s.target for s in samples}

    devkit = load_eval_set(flat, labels, ground_truth=gt, synsets=synsets)
    assert devkit.layout == "ilsvrc-flat" and as_dict(devkit.samples) == expected
    assert as_dict(load_eval_set(flat, labels).samples) == expected  # LOC_val_solution.csv, auto-detected
    plain = tmp_path / "wnids.txt"  # one wnid per line in ID order
    plain.write_text("".join(f"{labels[len(labels) - i].id}\n" for i in range(1, len(labels) + 1)))
    assert as_dict(load_eval_set(flat, labels, ground_truth=gt, synsets=plain).samples) == expected
    imagenet = load_eval_set(reference.val_dir, labels)
    assert imagenet.layout == "imagenet"
    by_photo = {s.path.name: s.target for s in imagenet.samples if s.path.name.startswith("photo_")}
    assert sorted(by_photo.values()) == sorted(expected.values())

    with pytest.raises(EvalDataError, match="--synsets"):
        load_eval_set(flat, labels, ground_truth=gt)  # devkit IDs are not class indices: refuse to guess
    (flat / "ILSVRC2012_val_00000099.JPEG").write_bytes(b"x")
    with pytest.raises(EvalDataError, match="no entry in"):
        load_eval_set(flat, labels, ground_truth=gt, synsets=synsets)


def test_flat_layout_end_to_end(reference, tmp_path, capsys):
    flat = tmp_path / "flat"
    expected = _flat_copy(reference, flat)
    loc = tmp_path / "LOC_val_solution.csv"
    loc.write_text("ImageId,PredictionString\n" + "".join(
        f"{name.split('.')[0]},{reference.labels[t].id} 0 0 9 9\n" for name, t in expected.items()))
    report_path = tmp_path / "r.json"
    code, _, err = _run_cli([str(flat), "--model-store", str(reference.root), "--model-name", "testnet",
                             "--ground-truth", str(loc), "--crops", "center", "--report", str(report_path)], capsys)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert set(report["crops"]) == {"center"}
    assert report["dataset"]["layout"] == "ilsvrc-flat" and report["failed"]["count"] == 0
    top1, top5 = reference.accuracy("center")
    assert report["crops"]["center"]["images"] == N_IMAGES
    assert (report["crops"]["center"]["top1"], report["crops"]["center"]["top5"]) == pytest.approx((top1, top5))


def test_unknown_class_is_a_clear_error_before_any_work(reference, tmp_path, monkeypatch, capsys):
    val = tmp_path / "val"
    shutil.copytree(reference.val_dir, val)
    (val / "unicorn").mkdir()
    shutil.copy(reference.images[0], val / "unicorn" / "u.jpg")

    def no_work(*_args, **_kwargs):
        raise AssertionError("the model was loaded or an image decoded before the data was checked")

    monkeypatch.setattr(InProcessBackend, "start", no_work)
    monkeypatch.setattr(InProcessBackend, "evaluate", no_work)
    code, _, err = _run_cli([str(val), "--model-store", str(reference.root)], capsys)
    assert code == 2
    assert "'unicorn'" in err and "not among the model's 10 classes" in err and "n00 (zero)" in err

    code, _, err = _run_cli([str(tmp_path / "missing"), "--model-store", str(reference.root)], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = _run_cli([str(reference.val_dir), "--model-store", str(reference.root), "--model-name", "nope"],
                            capsys)
    assert code == 2 and "no model named 'nope'" in err
    code, _, err = _run_cli([str(reference.val_dir), "--model-store", str(reference.root),
                             "--report", str(tmp_path / "no" / "such" / "dir.json")], capsys)
    assert code == 2 and "does not exist" in err
    with pytest.raises(SystemExit) as exc:
        cli.main([str(reference.val_dir), "--url", "http://127.0.0.1:9", "--providers", "CPUExecutionProvider"])
    assert exc.value.code == 2


def test_limit_spreads_over_classes(reference):
    full = load_eval_set(reference.val_dir, reference.labels)
    classes = {s.target for s in full.samples}
    limited = load_eval_set(reference.val_dir, reference.labels, limit=len(classes))
    assert len(limited.samples) == len(classes) and {s.target for s in limited.samples} == classes


# -- HTTP backend -------------------------------------------------------------------------------------------
MODELS_BODY = {"models": [{"name": "mock", "version": 3, "state": "READY", "ready": True, "default": True,
                           "provider": "CPUExecutionProvider", "requested_providers": ["CPUExecutionProvider"],
                           "available_providers": ["CPUExecutionProvider"], "path": "mock/3",
                           "metadata": {"precision": "fp32",
                                        "labels": [{"id": f"c{i}", "name": f"class {i}"} for i in range(6)]}}]}


def _mock_backend(handler, **kwargs) -> HttpBackend:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS_BODY)
        if request.url.path == "/health/ready":
            return httpx.Response(200, json={"status": "ready"})
        return handler(request)

    return HttpBackend("http://mock", transport=httpx.MockTransport(route), backoff=0.001, **kwargs)


def _mock_samples(tmp_path: Path, names: list[str]) -> list[Sample]:
    samples = []
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(name.encode())
        samples.append(Sample(tmp_path / name, i % 6))
    return samples


def _answer(request: httpx.Request) -> httpx.Response:
    """A fake /predict: file 'bad*' fails the whole request (as the service does); class = len(name) % 6."""
    body = request.read()
    names = [part.split(b'filename="')[1].split(b'"')[0].decode() for part in body.split(b"Content-Disposition")[1:]]
    if any(n.startswith("bad") for n in names):
        bad = next(n for n in names if n.startswith("bad"))
        return httpx.Response(400, json={"detail": f"{bad}: corrupt or truncated image"})
    k = int(request.url.params["top_k"])
    return httpx.Response(200, json={"model": {"name": "mock", "version": 3}, "crops": request.url.params["crops"],
                                     "top_k": k, "provider": "CPUExecutionProvider",
                                     "timing": {"read_ms": 1, "preprocess_ms": 1, "inference_ms": 1, "total_ms": 3},
                                     "results": [{"filename": n, "image": {"format": "JPEG", "width": 9, "height": 9},
                                                  "preprocess_ms": 1, "predictions": [
                                         {"index": (len(n) + j) % 6, "label": "x", "id": "x",
                                          "probability": 0.5 / (j + 1)} for j in range(k)]} for n in names]})


def test_http_backend_retries_503_and_connection_errors(tmp_path):
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "queue full"})
        if calls["n"] == 2:
            raise httpx.ConnectError("connection refused", request=request)
        return _answer(request)

    backend = _mock_backend(flaky, workers=1, batch_size=4)
    samples = _mock_samples(tmp_path, ["a.jpg", "bb.jpg", "ccc.jpg"])
    got = []
    backend.evaluate(samples, ["ten", "center"], got.append)
    assert backend.retried == 2
    assert sorted(r.position for r in got) == [0, 1, 2] and all(r.ok for r in got)
    first = next(r for r in got if r.position == 0)
    assert first.topk["ten"] == TopK((5, 0, 1, 2, 3), (0.5, 0.25, 0.5 / 3, 0.125, 0.1))

    always_down = _mock_backend(lambda r: httpx.Response(503, json={"detail": "busy"}), retries=2)
    with pytest.raises(BackendError, match="failed 3 times; last: HTTP 503"):
        always_down.evaluate(samples, ["center"], got.append)


def test_http_backend_isolates_a_bad_file_in_a_batch(tmp_path):
    backend = _mock_backend(_answer, workers=2, batch_size=8)
    samples = _mock_samples(tmp_path, [f"img{i}.jpg" for i in range(6)] + ["bad.jpg", "img7.jpg"])
    got = []
    backend.evaluate(samples, ["ten", "center"], got.append)
    assert sorted(r.position for r in got) == list(range(8))
    failed = [r for r in got if not r.ok]
    assert [r.path.name for r in failed] == ["bad.jpg"]
    assert "400" in failed[0].error and "corrupt" in failed[0].error


# -- the real service -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service_url(reference, tmp_path_factory):
    server = start_server(reference.root, tmp_path_factory.mktemp("eval-serve") / "serve.log", "--providers",
                          "CPUExecutionProvider")
    try:
        yield server.url
    finally:
        stop_server(server)


def test_http_and_in_process_backends_agree_image_by_image(reference, service_url, tmp_path, capsys):
    eval_set = load_eval_set(reference.val_dir, reference.labels)
    local = InProcessBackend(reference.root, "testnet", providers=["CPUExecutionProvider"], batch_size=4)
    local.start()
    local_eval, _ = run_evaluation(local, eval_set, ["ten", "center"], progress=False)
    remote = HttpBackend(service_url, workers=3, batch_size=3)
    assert [lab.id for lab in remote.describe().labels] == [lab.id for lab in reference.labels]
    remote.start()
    remote_eval, _ = run_evaluation(remote, eval_set, ["ten", "center"], progress=False)

    local_by, remote_by = ({r.position: r for r in e.results} for e in (local_eval, remote_eval))
    reference_top5 = {p.name: tuple(int(c) for c in top) for p, top in zip(reference.images, reference.top5["ten"],
                                                                          strict=True)}
    assert sorted(local_by) == sorted(remote_by) == list(range(len(eval_set.samples)))
    for position, a in local_by.items():
        b = remote_by[position]
        assert (a.path, a.target, a.ok) == (b.path, b.target, b.ok)
        if not a.ok:
            continue
        for scheme in ("ten", "center"):
            assert a.topk[scheme].indices == b.topk[scheme].indices, (a.path, scheme)
            np.testing.assert_allclose(a.topk[scheme].probabilities, b.topk[scheme].probabilities, rtol=1e-5,
                                       atol=1e-7)
        assert a.topk["ten"].indices == reference_top5[a.path.name]
    assert len(local_eval.failed) == len(remote_eval.failed) == 2

    # and through the command line: the same report numbers
    report_path = tmp_path / "r.json"
    code, _, err = _run_cli([str(reference.val_dir), "--url", service_url, "--model-name", "testnet",
                             "--model-version", "1", "--report", str(report_path)], capsys)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["backend"] == "http" and report["url"] == service_url
    assert report["model"]["name"] == "testnet" and report["model"]["version"] == 1
    assert report["failed"]["count"] == 2
    for scheme in ("ten", "center"):
        top1, top5 = reference.accuracy(scheme)
        assert (report["crops"][scheme]["top1"], report["crops"][scheme]["top5"]) == pytest.approx((top1, top5))


def test_url_with_an_unknown_model_is_a_setup_error(service_url, reference, capsys):
    code, _, err = _run_cli([str(reference.val_dir), "--url", service_url, "--model-name", "nope"], capsys)
    assert code == 2 and "answered 404" in err and "no model named 'nope'" in err
