"""`alexnet-import` (bench/importer.py) and `make serve`'s chooser (bench/serve.py), on stand-ins in the real formats.

The stand-ins are what people bring, with random weights: torchvision state_dicts saved with ``torch.save`` under
torchvision's ``NAME-HASH8.pth`` name with the file's true sha256 prefix, and an ONNX graph shaped like the model
zoo's ``bvlcalexnet-12.onnx`` (input ``data_0`` fixed at a batch of 1, a Reshape to [1, D], output ``prob_1`` out of
a Softmax, BGR pixels in 0-255 with Caffe's mean subtracted). Each network's last layer is scaled so its
probabilities are far from uniform (a random init's 1/1000 everywhere would make any 1e-5 comparison empty).

The expectations are independent of the code under test: for torchvision, the test's own torchvision network loaded
from the file, on torchvision's transforms (the weights' ``transforms()`` for the centre crop; Resize → CenterCrop →
``TenCrop`` for ten); for ONNX, the original file in ONNX Runtime on patches cut by torchvision's TenCrop and
swapped and normalised in numpy. What is compared is what the service serves: its patches through its serving graph
(`ClassifierModel`), and, for one torchvision and one ONNX import, a real `alexnet-serve` answering /v2 infer.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageOps
from support.paths import REPO, SHARED_DATA, SKLEARN_IMAGES
from support.server import start_server, stop_server
from torchvision import transforms as T

from alexnet_store import ModelStore

PHOTOS = [SKLEARN_IMAGES / "china.jpg", SKLEARN_IMAGES / "flower.jpg"]
IMAGENET_LABELS = SHARED_DATA / "imagenet_classes.tsv"  # index, wnid, name
TOLERANCE = 1e-5  # the issue's: |served - reference| of every probability
BVLC_MEAN = np.array([104.0, 117.0, 123.0], np.float32)  # B, G, R: the zoo's AlexNet, written here on purpose
# the weights enum member where the arch has several ImageNet ones (the stand-in's name is not torchvision's)
WEIGHTS = {"resnet50": "IMAGENET1K_V2"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_import(*argv: str) -> tuple[int, str]:
    """The importer's entry point in this process (torch is imported once), its status and what it said."""
    from bench import importer

    said: list[str] = []
    try:
        version = importer.run(importer.build_parser().parse_args(list(argv)), log=said.append)
    except importer.ModelImportError as exc:
        return 2, f"{exc}\n" + "\n".join(said)
    return 0, str(version.path)


def assert_store_untouched(root: Path) -> None:
    """Nothing reached the store: no version, no staging directory, no empty model directory."""
    assert not root.exists() or list(root.rglob("*")) == [], sorted(map(str, root.rglob("*")))


# -- stand-ins ------------------------------------------------------------------------------------------------------
def _normalised_crop(img: Image.Image) -> torch.Tensor:
    t = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                   T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return t(img)[None]


def standin_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A random-init torchvision `arch` for 1,000 classes whose logits on a photo have a spread of about 4."""
    torch.manual_seed(seed)
    extra = {"aux_logits": True, "init_weights": True} if arch == "googlenet" else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=1000, **extra).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with Image.open(PHOTOS[0]) as img, torch.no_grad():
        logits = model(_normalised_crop(img.convert("RGB")))
        factor = 4.0 / float(logits.std())
        last.weight.mul_(factor)
        last.bias.normal_(0, 1)
    return model


def save_hub_style(state: dict, directory: Path, stem: str, prefix: str | None = None) -> Path:
    """`state` saved by torch.save as STEM-HASH8.pth, HASH8 the file's sha256 prefix (or `prefix`, a wrong one)."""
    directory.mkdir(parents=True, exist_ok=True)
    scratch = directory / f"{stem}.partial"
    torch.save(state, scratch)
    target = directory / f"{stem}-{prefix or sha256(scratch)[:8]}.pth"
    scratch.rename(target)
    return target


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hub_style(standin_model("resnet18").state_dict(), tmp_path_factory.mktemp("rn18"), "resnet18")


# -- independent references -----------------------------------------------------------------------------------------
def photo(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


def reference_network(arch: str, path: Path) -> torch.nn.Module:
    """torchvision's `arch` with the file's weights, as torchvision runs pretrained weights (googlenet: with the
    input transform its ImageNet weights switch on)."""
    extra = {"aux_logits": True, "transform_input": True, "init_weights": False} if arch == "googlenet" else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=1000, **extra)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def torchvision_reference(model: torch.nn.Module, weights, path: Path) -> dict[str, np.ndarray]:
    t = weights.transforms()
    img = photo(path)
    resize, crop = t.resize_size[0], t.crop_size[0]
    norm = T.Compose([T.PILToTensor(), T.ConvertImageDtype(torch.float32), T.Normalize(t.mean, t.std)])
    square = T.CenterCrop(resize)(T.Resize(resize, interpolation=t.interpolation, antialias=True)(img))
    ten = torch.stack([norm(c) for c in T.TenCrop(crop)(square)])
    with torch.inference_mode():
        return {"ten": torch.softmax(model(ten), -1).double().numpy(),
                "center": torch.softmax(model(t(img)[None]), -1).double().numpy()}


def served_patches(version_path: Path, images: list[Path]) -> list[dict[str, np.ndarray]]:
    """The service's patches (service/preprocess.py) through the version's serving graph (service/model.py)."""
    from service.model import ClassifierModel
    from service.preprocess import DecodeLimits, prepare_image

    version = ModelStore.load(version_path)
    pre = version.metadata.preprocessing
    model = ClassifierModel(version, providers=["CPUExecutionProvider"])
    model.load(warmup_batch=1)
    out = []
    for path in images:
        prepared = prepare_image(path.read_bytes(), ("ten", "center"), pre.resize_size, pre.crop_size,
                                 DecodeLimits(max_pixels=1 << 30, draft=False), pre.interpolation)
        out.append({s: model.predict(p).astype(np.float64) for s, p in prepared.patches.items()})
    model.close()
    return out


def assert_close(served: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    for scheme in ("ten", "center"):
        assert served[scheme].shape == reference[scheme].shape
        np.testing.assert_allclose(served[scheme], reference[scheme], rtol=0, atol=TOLERANCE, err_msg=scheme)
    assert reference["ten"].max() > 0.01, "the stand-in's probabilities are near uniform: the check says nothing"


# -- torchvision imports --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [
    "alexnet", "vgg11", "googlenet", "resnet18",
    pytest.param("vgg16", marks=pytest.mark.slow), pytest.param("resnet50", marks=pytest.mark.slow),
    pytest.param("densenet121", marks=pytest.mark.slow)])
def test_torchvision_import_serves_what_torchvision_computes(arch, tmp_path):
    from torchvision.models import get_model_weights

    file = save_hub_style(standin_model(arch).state_dict(), tmp_path / "weights", arch)
    store = tmp_path / "store"
    extra = ["--weights", WEIGHTS[arch]] if arch in WEIGHTS else []
    status, said = run_import("--torchvision", arch, str(file), "--model-store", str(store), *extra)
    assert status == 0, said
    version = ModelStore(store).resolve(f"torchvision-{arch}")
    meta = version.metadata
    weights = get_model_weights(arch)[WEIGHTS.get(arch, "IMAGENET1K_V1")]
    t = weights.transforms()
    assert (meta.imported.kind, meta.imported.arch, meta.imported.weights) == ("torchvision", arch, str(weights))
    assert (meta.imported.file, meta.imported.sha256) == (file.name, sha256(file))
    assert meta.imported.top1 == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    pre = meta.preprocessing
    assert (pre.resize_size, pre.crop_size, pre.interpolation) == (t.resize_size[0], t.crop_size[0],
                                                                    t.interpolation.value)
    assert (list(pre.mean), list(pre.std), pre.channel_order, pre.pixel_range) == (list(t.mean), list(t.std),
                                                                                    "RGB", "0-1")
    assert [label.name for label in meta.labels] == weights.meta["categories"]
    assert meta.parity is not None and meta.parity.max_rel_diff <= meta.parity.tolerance
    model = reference_network(arch, file)
    for served, path in zip(served_patches(version.path, PHOTOS), PHOTOS, strict=True):
        assert_close(served, torchvision_reference(model, weights, path))
    assert [p.name for p in (store / f"torchvision-{arch}").iterdir() if p.name.startswith(".staging")] == []


def test_wrong_hash_prefix_is_refused(resnet18_file, tmp_path):
    wrong = "0" * 8 if not sha256(resnet18_file).startswith("0" * 8) else "f" * 8
    renamed = tmp_path / f"resnet18-{wrong}.pth"
    os.link(resnet18_file, renamed)
    store = tmp_path / "store"
    # the console script itself: its exit status and its one-line error
    done = subprocess.run([str(Path(sys.executable).parent / "alexnet-import"), "--torchvision", "resnet18",
                           str(renamed), "--model-store", str(store)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("alexnet-import: error: ") and f"begins {wrong}" in error
    assert f"it begins {sha256(resnet18_file)[:8]}" in error
    assert done.stdout == ""
    assert_store_untouched(store)


def _refused(tmp_path: Path, *argv: str) -> str:
    store = tmp_path / "store"
    status, said = run_import(*argv, "--model-store", str(store))
    assert status == 2, said
    assert_store_untouched(store)
    return said.splitlines()[0]


def test_wrong_state_dicts_are_refused(resnet18_file, tmp_path):
    state = torch.load(resnet18_file, weights_only=True)
    missing = {k: v for k, v in state.items() if k not in ("fc.bias", "layer4.1.bn2.running_var")}
    torch.save(missing, tmp_path / "missing.pth")
    error = _refused(tmp_path, "--torchvision", "resnet18", str(tmp_path / "missing.pth"))
    assert "2 missing keys" in error and "fc.bias" in error and "layer4.1.bn2.running_var" in error

    shapes = {**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    torch.save(shapes, tmp_path / "shapes.pth")
    error = _refused(tmp_path, "--torchvision", "resnet18", str(tmp_path / "shapes.pth"))
    assert "2 shape mismatches" in error and "fc.weight [10, 512] (expected [1000, 512])" in error

    error = _refused(tmp_path, "--torchvision", "alexnet", str(resnet18_file))
    assert "it holds resnet18's weights, not alexnet's" in error and "--torchvision resnet18" in error

    torch.save(torchvision.models.resnet18(), tmp_path / "whole.pth")  # a whole pickled model, not a state_dict
    error = _refused(tmp_path, "--torchvision", "resnet18", str(tmp_path / "whole.pth"))
    assert "pickled Python objects" in error and "state_dict" in error

    error = _refused(tmp_path, "--torchvision", "resnet34x", str(resnet18_file))
    assert "not one of torchvision's classification networks" in error


# -- ONNX imports ---------------------------------------------------------------------------------------------------
def bvlc_like_graph(path: Path, *, size: int = 224, classes: int = 1000, seed: int = 0) -> Path:
    """A small convnet in the zoo AlexNet's form: `data_0` [1, 3, size, size] (BGR, 0-255, mean subtracted) → conv
    → relu → pool → conv → relu → pool → Reshape [1, D] → Gemm → Softmax → `prob_1` [1, classes], opset 12, its
    weights listed as graph inputs as Caffe2's exporter wrote them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    s1 = (size + 4 - 11) // 4 + 1
    p1 = (s1 - 3) // 2 + 1
    s2 = (p1 + 4 - 5) // 2 + 1
    p2 = (s2 - 3) // 2 + 1
    flat = 16 * p2 * p2
    weights = {
        "conv1_w_0": rng.normal(0, 1 / (60 * np.sqrt(363)), (16, 3, 11, 11)), "conv1_b_0": rng.normal(0, 0.1, 16),
        "conv2_w_0": rng.normal(0, np.sqrt(2 / 400), (16, 16, 5, 5)), "conv2_b_0": np.zeros(16),
        "fc_w_0": rng.normal(0, 4 / np.sqrt(flat), (classes, flat)), "fc_b_0": rng.normal(0, 1, classes),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array([1, flat], np.int64), "OC2_DUMMY_1"))
    nodes = [
        helper.make_node("Conv", ["data_0", "conv1_w_0", "conv1_b_0"], ["c1"], kernel_shape=[11, 11], strides=[4, 4],
                         pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2_w_0", "conv2_b_0"], ["c2"], kernel_shape=[5, 5], strides=[2, 2],
                         pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Reshape", ["p2", "OC2_DUMMY_1"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w_0", "fc_b_0"], ["fc"], transB=1),
        helper.make_node("Softmax", ["fc"], ["prob_1"], axis=1),
    ]
    inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, size, size])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "bvlc_alexnet_standin", inputs,
                              [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def bvlc_reference(path: Path, image: Path, resize: int = 256, crop: int = 224) -> dict[str, np.ndarray]:
    """The original graph, unmodified, one patch a run, on TenCrop's patches swapped to BGR, mean subtracted."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    square = T.CenterCrop(resize)(T.Resize(resize, antialias=True)(photo(image)))
    patches = [np.asarray(c, np.float32)[..., ::-1] - BVLC_MEAN for c in T.TenCrop(crop)(square)]  # RGB → BGR

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(["prob_1"], {"data_0": x.transpose(2, 0, 1)[None].copy()})[0][0]

    ten = np.stack([run(p) for p in patches]).astype(np.float64)
    return {"ten": ten, "center": ten[4:5]}


@pytest.fixture(scope="module")
def bvlc_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bvlc_like_graph(tmp_path_factory.mktemp("zoo") / "bvlcalexnet-12.onnx")


def test_onnx_preset_import_serves_what_the_original_graph_computes(bvlc_file, tmp_path):
    store = tmp_path / "store"
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class number {i}\n" for i in range(1000)))
    status, said = run_import("--onnx", str(bvlc_file), "--preset", "bvlc-alexnet", "--labels", str(labels),
                              "--model-store", str(store))
    assert status == 0, said
    version = ModelStore(store).resolve("bvlcalexnet-12")
    meta = version.metadata
    assert (meta.onnx.input_name, meta.onnx.output_name, meta.onnx.output_kind) == ("data_0", "prob_1",
                                                                                  "probabilities")
    pre = meta.preprocessing
    assert (pre.channel_order, pre.pixel_range, pre.mean, pre.std) == ("BGR", "0-255", (104.0, 117.0, 123.0),
                                                                        (1.0, 1.0, 1.0))
    assert (pre.resize_size, pre.crop_size) == (256, 224)
    assert (meta.imported.kind, meta.imported.sha256, meta.imported.preset) == ("onnx", sha256(bvlc_file),
                                                                               "bvlc-alexnet")
    assert meta.labels[7].name == "class number 7"
    for served, path in zip(served_patches(version.path, PHOTOS), PHOTOS, strict=True):
        assert_close(served, bvlc_reference(bvlc_file, path))


def test_the_comparison_sees_a_wrong_channel_order(bvlc_file, tmp_path):
    """The same graph imported as if it took RGB: published (its parity check compares it with the graph on RGB
    patches), but what it serves is far from the BGR reference, as a zoo model served with the wrong
    preprocessing is far from Caffe's."""
    store = tmp_path / "store"
    status, said = run_import("--onnx", str(bvlc_file), "--preset", "bvlc-alexnet", "--channel-order", "RGB",
                              "--mean", "123,117,104", "--name", "as-rgb", "--model-store", str(store))
    assert status == 0, said
    (served,) = served_patches(ModelStore(store).resolve("as-rgb").path, PHOTOS[:1])
    assert np.abs(served["ten"] - bvlc_reference(bvlc_file, PHOTOS[0])["ten"]).max() > 100 * TOLERANCE


def test_onnx_config_file_with_another_crop_size(tmp_path):
    """A TOML declaration; a graph that takes 227×227 patches (Caffe's own crop) from a 256 square."""
    graph = bvlc_like_graph(tmp_path / "caffe227.onnx", size=227, classes=20, seed=1)
    config = tmp_path / "pre.toml"
    config.write_text('channel_order = "BGR"\npixel_range = "0-255"\nmean = [104, 117, 123]\nstd = [1, 1, 1]\n'
                      'resize_size = 256\ninterpolation = "bilinear"\n')
    store = tmp_path / "store"
    status, said = run_import("--onnx", str(graph), "--config", str(config), "--model-store", str(store))
    assert status == 0, said
    version = ModelStore(store).resolve("caffe227")
    assert (version.metadata.preprocessing.crop_size, version.metadata.preprocessing.resize_size) == (227, 256)
    assert [label.name for label in version.metadata.labels][:2] == ["class_0", "class_1"]
    for served, path in zip(served_patches(version.path, PHOTOS), PHOTOS, strict=True):
        assert_close(served, bvlc_reference(graph, path, 256, 227))


def test_onnx_files_that_are_not_classifiers_are_refused(bvlc_file, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def save(name: str, inputs, outputs, nodes, inits=()) -> str:
        model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, list(inits)),
                                  opset_imports=[helper.make_opsetid("", 13)])
        onnx.save(model, tmp_path / f"{name}.onnx")
        return str(tmp_path / f"{name}.onnx")

    vector = save("vector", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 100])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 100])],
                  [helper.make_node("Softmax", ["x"], ["y"], axis=1)])
    error = _refused(tmp_path, "--onnx", vector, "--preset", "torchvision")
    assert "not an image classifier" in error and "'x'" in error and "[N, C, H, W]" in error

    maps = save("maps", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 224, 224])],
                [helper.make_node("Relu", ["x"], ["y"])])
    error = _refused(tmp_path, "--onnx", maps, "--preset", "torchvision")
    assert "is not a classifier" in error and "'y'" in error and "[N, K]" in error

    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf" * 10)
    error = _refused(tmp_path, "--onnx", str(tmp_path / "junk.onnx"), "--preset", "torchvision")
    assert "is not a valid ONNX model" in error

    error = _refused(tmp_path, "--onnx", str(bvlc_file))  # no preprocessing declared: never guessed
    assert "declare its preprocessing" in error and "--preset" in error

    error = _refused(tmp_path, "--onnx", str(bvlc_file), "--preset", "bvlc-alexnet", "--crop-size", "227")
    assert "crop_size 227 was declared" in error and "224×224" in error

    error = _refused(tmp_path, "--onnx", str(bvlc_file), "--preset", "bvlc-alexnet", "--mean", "1,2")
    assert "3 channel(s)" in error and "2 mean" in error


def test_a_failed_parity_check_publishes_nothing(bvlc_file, tmp_path):
    """Above the tolerance (here 0: any rounding at all) the staged version is removed with its directory."""
    error = _refused(tmp_path, "--onnx", str(bvlc_file), "--preset", "bvlc-alexnet", "--parity-tolerance", "0")
    assert error.startswith("parity check failed") and "nothing was written" in error


# -- served by a real alexnet-serve -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imported_server(bvlc_file, tmp_path_factory: pytest.TempPathFactory):
    """A real `alexnet-serve` over a store holding a torchvision AlexNet import and the zoo-shaped ONNX import,
    both published by the console script's own `main`; with the files they came from."""
    from bench import importer

    if not IMAGENET_LABELS.is_file():
        pytest.skip(f"{IMAGENET_LABELS} is not here (the shared data beside the checkout)")
    tmp = tmp_path_factory.mktemp("served-imports")
    store = tmp / "store"
    alexnet = save_hub_style(standin_model("alexnet", seed=3).state_dict(), tmp / "weights", "alexnet")
    assert importer.main(["--torchvision", "alexnet", str(alexnet), "--labels", str(IMAGENET_LABELS),
                          "--model-store", str(store)]) == 0
    assert importer.main(["--onnx", str(bvlc_file), "--preset", "bvlc-alexnet", "--name", "bvlc-alexnet",
                          "--model-store", str(store)]) == 0
    server = start_server(store, tmp / "server.log", "--models", "torchvision-alexnet,bvlc-alexnet",
                          "--providers", "CPUExecutionProvider")
    yield server, alexnet, bvlc_file
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it so the exit status shows the signal
    assert stop_server(server) in (0, -signal.SIGTERM), server.log.read_text()


def test_real_server_shows_and_serves_imported_models(imported_server):
    import base64

    server, alexnet, bvlc_file = imported_server
    weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    reference = {"torchvision-alexnet": [torchvision_reference(reference_network("alexnet", alexnet), weights, p)
                                         for p in PHOTOS],
                 "bvlc-alexnet": [bvlc_reference(bvlc_file, p) for p in PHOTOS]}
    with server.client() as c:
        listed = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        tv, onnx_model = listed["torchvision-alexnet"]["metadata"], listed["bvlc-alexnet"]["metadata"]
        assert tv["imported"]["kind"] == "torchvision" and tv["imported"]["arch"] == "alexnet"
        assert tv["imported"]["weights"] == "AlexNet_Weights.IMAGENET1K_V1"
        assert tv["imported"]["sha256"] == sha256(alexnet) and tv["imported"]["file"] == alexnet.name
        assert tv["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
        # --labels: ImageNet's wnids as label ids (what alexnet-eval matches class folders with), names kept
        assert tv["labels"][0] == {"id": "n01440764", "name": "tench"} and len(tv["labels"]) == 1000
        assert onnx_model["imported"]["kind"] == "onnx" and onnx_model["imported"]["sha256"] == sha256(bvlc_file)
        assert onnx_model["preprocessing"]["channel_order"] == "BGR"
        assert onnx_model["preprocessing"]["pixel_range"] == "0-255"
        assert onnx_model["preprocessing"]["mean"] == [104.0, 117.0, 123.0]

        params = c.get("/v2/models/bvlc-alexnet").json()["parameters"]
        assert (params["source"], params["source_sha256"], params["source_preset"]) == (
            "onnx", sha256(bvlc_file), "bvlc-alexnet")
        assert (params["channel_order"], params["pixel_range"], params["mean"], params["std"]) == (
            "BGR", "0-255", "104,117,123", "1,1,1")
        params = c.get("/v2/models/torchvision-alexnet").json()["parameters"]
        assert (params["source"], params["source_arch"], params["source_weights"]) == (
            "torchvision", "alexnet", "AlexNet_Weights.IMAGENET1K_V1")
        assert params["source_top1"] == 56.522 and params["source_top5"] == 79.066

        for name, expected in reference.items():
            for crops in ("ten", "center"):
                body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(PHOTOS)],
                                    "data": [base64.b64encode(p.read_bytes()).decode() for p in PHOTOS]}],
                        "parameters": {"crops": crops}, "outputs": [{"name": "probabilities"}]}
                r = c.post(f"/v2/models/{name}/infer", json=body)
                assert r.status_code == 200, r.text
                out = r.json()["outputs"][0]
                got = np.asarray(out["data"], np.float64).reshape(out["shape"])
                want = np.stack([e[crops].mean(axis=0) for e in expected])
                np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE, err_msg=f"{name} {crops}")
                assert want.max() > 0.01


def test_page_shows_each_imported_models_source_and_preprocessing(imported_server, tmp_path):
    """The page at / in a real headless Chromium: the chosen model's line under the picker."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from support.browser import missing_browser, start_chromium

    if (reason := missing_browser()) is not None:
        pytest.skip(f"no headless Chromium for the page: {reason}")
    server, alexnet, bvlc_file = imported_server
    driver = start_chromium(tmp_path / "profile")
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30, poll_frequency=0.1)

        def info_of(name: str) -> tuple[str, str]:
            Select(driver.find_element(By.ID, "model")).select_by_value(name)
            wait.until(lambda d: name in d.find_element(By.ID, "model-info").text)
            info = driver.find_element(By.ID, "model-info")
            return (info.find_element(By.CSS_SELECTOR, ".source").text,
                    info.find_element(By.CSS_SELECTOR, ".preprocessing").text)

        wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) >= 2)
        source, pre = info_of("bvlc-alexnet")
        assert source.startswith(f"ONNX file {bvlc_file.name}, sha256 {sha256(bvlc_file)[:16]}")
        assert "preset bvlc-alexnet" in source
        assert "BGR in 0-255, mean 104/117/123, no std" in pre and "224×224 patches" in pre
        source, pre = info_of("torchvision-alexnet")
        assert source.startswith(f"torchvision's alexnet, weights AlexNet_Weights.IMAGENET1K_V1 ({alexnet.name}")
        assert "56.5 % top-1, 79.1 % top-5" in source
        assert "RGB in 0-1, mean 0.485/0.456/0.406, std 0.229/0.224/0.225" in pre and "1,000 classes" in pre
    finally:
        driver.quit()


# -- make serve -----------------------------------------------------------------------------------------------------
def make_serve(tmp_path: Path, store: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    return subprocess.run([sys.executable, "-m", "bench.serve", "--model-store", str(store), "--port", "8123",
                           "--print-command", *extra], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_make_serve_refuses_a_standin_under_torchvisions_name(tmp_path):
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "alexnet-owt-7be5be79.pth").write_bytes(b"not torchvision's AlexNet weights")
    store = tmp_path / "store"
    done = make_serve(tmp_path, store)
    assert done.returncode == 2, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("make serve: error: refusing torchvision's AlexNet weights")
    assert "begins 7be5be79" in first and "digits demo" in first
    assert_store_untouched(store)


def test_make_serve_without_weights_serves_the_digits_demo(exported, tmp_path):
    root, _, _ = exported  # a store that holds a model already: --if-empty builds nothing
    done = make_serve(tmp_path, root)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("make serve: serving the digits demo (no torchvision AlexNet weights at "
                               f"{tmp_path / 'torch' / 'hub' / 'checkpoints' / 'alexnet-owt-7be5be79.pth'}")
    command = lines[-1].split()
    assert command[0].endswith("alexnet-serve") or command[1:3] == ["-m", "service.cli"]
    assert command[-6:] == ["--model-store", str(root), "--host", "127.0.0.1", "--port", "8123"]
    assert "--models" not in command


def test_makefile_serve_target_goes_through_the_chooser():
    text = (REPO / "Makefile").read_text()
    recipe = text.split("\nserve:", 1)[1].split("\n\n", 1)[0]
    assert "-m bench.serve --model-store $(MODEL_STORE) --host $(HOST) --port $(PORT)" in recipe
    # one recipe line: no second command that would bypass the chooser
    assert len([line for line in recipe.splitlines() if line.startswith("\t")]) == 1


def as_typed_in_a_shell() -> dict[str, str]:
    """This environment without what a parent make (`make test`) passes down: under MAKELEVEL a sub-make prints
    "make[1]: Entering directory ..." first, which a user typing `make serve` never sees."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}


def test_make_serve_itself_says_first_why_it_refuses(tmp_path):
    """`make serve` as typed (its install step taken as done: -o), a stand-in under torchvision's name in
    TORCH_HOME: the first line on stdout is the refusal, and the recipe's status is 2."""
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "alexnet-owt-7be5be79.pth").write_bytes(b"\x00" * 1000)
    store = tmp_path / "store"
    done = subprocess.run(["make", "-o", ".venv/.installed", "serve", f"MODEL_STORE={store}", "PORT=8124"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**as_typed_in_a_shell(), "TORCH_HOME": str(tmp_path / "torch")})
    assert done.returncode != 0
    assert done.stdout.splitlines()[0].startswith("make serve: error: refusing torchvision's AlexNet weights at "
                                                  f"{checkpoints / 'alexnet-owt-7be5be79.pth'}")
    assert "Error 2" in done.stderr  # the recipe's own exit status, as make reports it
    assert_store_untouched(store)
