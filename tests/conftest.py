"""Fixtures shared by every test area: a real exported model (loaded once, served once), the shared sample images,
the digits data set and one tiny training run; GPU tests skip cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from support.gpu import cuda_provider_works
from support.paths import SHARED_DATA, SKLEARN_IMAGES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not cuda_provider_works():
        skip = pytest.mark.skip(reason="no CUDA GPU usable by ONNX Runtime here")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real ImageNet photos); tests that need it skip without it."""
    if not (SHARED_DATA / "imagenet-samples").is_dir():
        pytest.skip("../shared/data/imagenet-samples is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def project_photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """24 real photographs any clone can make: regions of the two photos scikit-learn ships (china.jpg,
    flower.jpg), at sizes and aspect ratios of ImageNet validation images (shorter side 170-500, so no JPEG draft
    reduction applies), as JPEG, PNG and WebP, a few in grayscale."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    sources = [Image.open(SKLEARN_IMAGES / name).convert("RGB") for name in ("china.jpg", "flower.jpg")]
    sizes = [(500, 375), (375, 500), (500, 333), (320, 240), (256, 256), (450, 300), (170, 170), (400, 300)]
    paths = []
    for i in range(24):
        photo = sources[i % 2]
        w, h = sizes[i % len(sizes)]
        scale = min(photo.width / w, photo.height / h) * (0.55 + 0.15 * (i % 3))
        left, top = (i * 37) % int(photo.width - w * scale + 1), (i * 23) % int(photo.height - h * scale + 1)
        region = photo.crop((left, top, left + int(w * scale), top + int(h * scale))).resize((w, h))
        if i % 7 == 3:
            region = region.convert("L")
        suffix = ("jpg", "png", "webp")[i % 3] if i % 4 else "jpg"
        path = folder / f"photo_{i:02d}.{suffix}"
        region.save(path, **({"quality": 90} if suffix in ("jpg", "webp") else {}))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    """The Fashion-MNIST IDX files of Debian's dataset-fashion-mnist package (`make test` installs it:
    scripts/test-deps.sh); tests that need them skip, naming the package, where it is not installed."""
    from training.fashion_mnist import DEFAULT_ROOT

    if not (DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {DEFAULT_ROOT} (apt-get install dataset-fashion-mnist)")
    return DEFAULT_ROOT


@pytest.fixture(scope="session")
def fashion_mnist(fashion_mnist_root: Path):
    """The data set, read once per session (55 MB of uint8)."""
    from training.fashion_mnist import load

    return load(fashion_mnist_root)


@pytest.fixture(scope="session")
def sample_images(shared_data: Path) -> list[Path]:
    return sorted(p for p in (shared_data / "imagenet-samples").iterdir() if p.is_file())


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """A real 10-class AlexNet (He init, so its outputs are far from uniform), exported once per session.

    Returns (store_root, ModelVersion, the PyTorch model in eval mode) — the model is the independent
    reference that ONNX Runtime results are compared against.
    """
    import torch

    from alexnet_store import Label, ModelStore, Preprocessing
    from training.alexnet import build_alexnet
    from training.export import export_to_store

    torch.manual_seed(1234)
    model = build_alexnet(10, init="kaiming").eval()
    root = tmp_path_factory.mktemp("store")
    labels = [Label(id=f"n0{i}", name=name) for i, name in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])]
    version = export_to_store(model, ModelStore(root), "testnet", labels, Preprocessing(), log=lambda _m: None)
    return root, version, model


@pytest.fixture(scope="session")
def loaded_model(exported):
    """The `exported` model in one loaded CPU session, shared by the tests that only run it (never mutate it)."""
    from service.model import ClassifierModel

    _, version, _ = exported
    model = ClassifierModel(version, providers=["CPUExecutionProvider"])
    model.load(warmup_batch=1)
    return model


@pytest.fixture(scope="session")
def shared_server(exported, tmp_path_factory: pytest.TempPathFactory):
    """One real `alexnet-serve` on the `exported` store with start_server's defaults (providers auto, the 3 MB /
    10 files / 30 MB limits, the store polled every 15 s), shared by the end-to-end modules that only send it
    requests (test_service_e2e, test_page, test_deploy's kserve smoke): one start (~10 s on 2 cores) instead of
    one a module. Read-only by contract: no test may unload or load its models or write to its store; the
    modules that do (test_v2_clients, test_rollover, test_openapi_contract's generated calls) start their own."""
    from support.server import start_server, stop_server

    root, _, _ = exported
    srv = start_server(root, tmp_path_factory.mktemp("shared-serve") / "serve.log")
    yield srv
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it so the exit status shows the signal
    assert stop_server(srv) in (0, -signal.SIGTERM), srv.log.read_text()


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 real digits (scikit-learn's, in the ImageNet layout): 40 train / 10 val, every class in both splits.
    Built once (~4 s); read-only: a test that adds files copies it first."""
    from training.demo import build_digits_dataset

    root = tmp_path_factory.mktemp("data") / "digits"
    build_digits_dataset(root, limit=50, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_run(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one tiny real training run the export and resume tests start from: full AlexNet, 4 digits, one step
    (kaiming init, lr 0.001), its folder (last.pt, metrics). Read-only: a test that resumes it copies it first."""
    from training import train

    run = tmp_path_factory.mktemp("tiny-run") / "run"
    assert train.main(["--data", str(digits), "--output", str(run), "--epochs", "1", "--limit-train", "4",
                       "--batch-size", "4", "--init", "kaiming", "--lr", "0.001", "--workers", "0",
                       "--no-progress"]) == 0
    return run

