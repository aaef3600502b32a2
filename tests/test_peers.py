"""`alexnet-bench --peers` (bench/peers.py): a real LitServe and a real TorchServe on the `exported` 10-class model,
each answering the top 5 of an independent reference (the PyTorch module itself, on torchvision's TenCrop) and of
the service, on real photos, and each driven by the load generator's own protocol. Skipped, with the reason, where
the peers extra (``pip install -e '.[peers]'``) or Java is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import peers

pytestmark = pytest.mark.slow


def _need(peer: str) -> None:
    why = peers.missing(peer)
    if why:
        pytest.skip(f"{peer}: {why}")


@pytest.fixture(scope="module")
def photo_dir(project_photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four of the real photos, as JPEG (shorter side under 512: the service decodes them in full, no draft)."""
    folder = tmp_path_factory.mktemp("peer-photos")
    jpegs = [p for p in project_photos if p.suffix.lower() in (".jpg", ".jpeg")][:4]
    for p in jpegs:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def _reference_top5(model, version, data: bytes) -> set[int]:
    """The PyTorch module on torchvision's Resize → CenterCrop → TenCrop → Normalize: softmax averaged, top 5."""
    import io

    import torch
    from PIL import Image
    from torchvision import transforms as T

    pre = version.metadata.preprocessing
    norm = T.Compose([T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    crops = T.Compose([T.Resize(pre.resize_size), T.CenterCrop(pre.resize_size), T.TenCrop(pre.crop_size)])(
        Image.open(io.BytesIO(data)).convert("RGB"))
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack([norm(c) for c in crops])), dim=1).mean(0)
    return set(probs.topk(5).indices.tolist())


@pytest.mark.parametrize("peer", peers.PEERS)
def test_peer_answers_the_models_top5_and_takes_load(peer, exported, shared_server, photo_dir, tmp_path):
    from service.settings import Settings

    _need(peer)
    _, version, model = exported
    config = peers.PeerConfig.from_settings(Settings(), "ten")
    scripted = peers.script_network(version, tmp_path, model) if peer == "torchserve" else None
    with peers.peer_server(peer, version, config, tmp_path, scripted) as endpoint:
        for path in sorted(photo_dir.iterdir()):
            data = path.read_bytes()
            theirs = peers.ask(endpoint.url, peer, path.name, data, "ten")
            assert len(theirs) == 5
            assert {i for i, _ in theirs} == _reference_top5(model, version, data), path.name
            check = peers.check_peer(peer, endpoint.url, shared_server.url, (path.name, data), "ten", repeats=1)
            assert check["same"], check
        done = subprocess.run(
            [sys.executable, "-m", "bench.loadgen", "--url", endpoint.url, "--images", str(photo_dir),
             "--protocol", peer, "--concurrency", "2", "--duration", "3", "--max-requests", "6", "--crops", "ten"],
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["errors"] == 0 and summary["ok"] >= 1, summary
        assert summary["images_per_s"] > 0
        _paused_takes_no_request_and_resumes(peer, endpoint, photo_dir)


def _group_states(pgid: int) -> dict[int, str]:
    """pid → state letter ("T": stopped) of every process in the group, read from /proc (fields after the name)."""
    states = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            states[int(stat.parent.name)] = fields[0]
    return states


def _paused_takes_no_request_and_resumes(peer, endpoint, photo_dir: Path) -> None:
    """`peers.paused` (the fairness rule: the idle server is stopped while the other is measured): every process of
    the peer's group is stopped, a request meanwhile gets no answer, and after it the same request is answered."""
    import os

    import httpx

    path = sorted(photo_dir.iterdir())[0]
    data = path.read_bytes()
    group = os.getpgid(endpoint.pid)
    assert len(_group_states(group)) >= 2  # the server and its worker(s)
    with peers.paused([endpoint.pid]):
        assert set(_group_states(group).values()) == {"T"}, _group_states(group)
        with pytest.raises(httpx.TimeoutException):
            peers.ask(endpoint.url, peer, path.name, data, "ten", timeout=2)
    assert "T" not in _group_states(group).values()
    assert len(peers.ask(endpoint.url, peer, path.name, data, "ten")) == 5


def test_a_peer_that_answers_differently_is_refused():
    service = [(3, 0.4), (1, 0.2), (7, 0.1), (0, 0.05), (9, 0.01)]
    other = [(3, 0.4), (1, 0.2), (7, 0.1), (0, 0.05), (8, 0.01)]
    assert peers.compare("litserve", "ten", "x.jpg", service, [service])["same"]
    refused = peers.compare("litserve", "ten", "x.jpg", service, [service, other])
    assert not refused["same"] and "refused" in refused["why"]


def test_parse_peers_rejects_unknown_names():
    assert peers.parse_peers("TorchServe, litserve,torchserve") == ["torchserve", "litserve"]
    with pytest.raises(ValueError, match="litserve"):
        peers.parse_peers("triton")
