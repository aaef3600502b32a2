"""The ceiling: a bare ONNX Runtime session on already-preprocessed crops, at the batch size the service uses.

Two ways of using the cores are measured: one session whose intra-op thread pool spans all cores (one batch
at a time), and one single-threaded session per core, each running its own batch concurrently. On a 2-core
CPU the second is faster (the LRN's memory-bound elementwise ops and the int8 graph's many small ops scale
poorly across threads; independent runs do not synchronise per op), at the price of each batch taking longer.
Two inputs are measured: the exported network itself (float32 NCHW crops, normalised: the number the roof
ratio is about) and the serving graph the service runs (uint8 NHWC patches → normalise → network → softmax,
from service/graph.py). Images/s = crops/s ÷ 10 for the paper's ten-crop evaluation.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from alexnet_store import ModelVersion
from alexnet_store.metadata import LUMA_WEIGHTS
from alexnet_store.vocabulary import PIXEL_MAX
from bench.roof import GFLOP_PER_TEN_CROP_IMAGE
from service.session import ElisionReport, cpu_session

CROPS_PER_IMAGE = 10  # the paper's ten-crop evaluation
# Real photographs beside the checkout (../shared/data), used by every benchmark that feeds the model images.
SHARED_SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imagenet-samples"


@dataclass
class Case:
    """One or more sessions and the batch each is fed on every call (several sessions run concurrently)."""

    label: str
    sessions: list[ort.InferenceSession]
    feeds: dict[str, np.ndarray]
    crops: int  # per call, all sessions together
    precision: str
    graph: str  # "network" (float crops) or "serving" (uint8 patches → probabilities)
    threads: int = 0  # intra-op threads per session (0: one per core)
    elision: ElisionReport = field(default_factory=ElisionReport)
    _pool: ThreadPoolExecutor | None = None

    def run(self) -> None:
        if len(self.sessions) == 1:
            self.sessions[0].run(None, self.feeds)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(self.sessions), thread_name_prefix="ceiling")
        for future in [self._pool.submit(s.run, None, self.feeds) for s in self.sessions]:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "crops": self.crops, "precision": self.precision, "graph": self.graph,
                "sessions": len(self.sessions), "intra_op_threads": self.threads,
                "reorders_removed": self.elision.removed_reorders, "elision_fallback": self.elision.fallback}


def sample_jpegs(count: int = 8, shared: Path | None = SHARED_SAMPLES) -> list[bytes]:
    """Real photographs as JPEG bytes: the first `count` of `shared` (../shared/data/imagenet-samples) when
    present, else scikit-learn's two."""
    if shared is not None and shared.is_dir():
        files = sorted(p for p in shared.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))[:count]
        if files:
            return [p.read_bytes() for p in files]
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = []
    for array in load_sample_images().images:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def patches(version: ModelVersion, batch: int, jpegs: Sequence[bytes]) -> np.ndarray:
    """uint8 [batch, crop, crop, 3]: the ten crops of real photographs (service/preprocess.py), tiled to `batch`."""
    from service.preprocess import image_to_crops
    from service.settings import Settings

    pre = version.metadata.preprocessing
    limits = Settings.model_construct().pipeline_config().limits  # the service's
    crops = np.concatenate([image_to_crops(j, "ten", pre.resize_size, pre.crop_size, limits, pre.interpolation)
                            for j in jpegs])
    reps = -(-batch // len(crops))
    return np.ascontiguousarray(np.concatenate([crops] * reps)[:batch])


def normalised(version: ModelVersion, uint8_patches: np.ndarray) -> np.ndarray:
    """What the serving graph feeds the network: float32 NCHW, (x/255 − mean)/std (a 1-channel network: of the luma;
    an imported one: in its channel order and pixel range)."""
    pre = version.metadata.preprocessing
    x = uint8_patches.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0 / PIXEL_MAX[pre.pixel_range])
    if pre.channel_order == "BGR":
        x = x[:, ::-1]
    if pre.input_channels == 1:
        x = np.tensordot(np.asarray(LUMA_WEIGHTS, np.float32), x, axes=([0], [1]))[:, None]
    mean = np.asarray(pre.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def network_case(label: str, onnx_path: Path, version: ModelVersion, uint8_patches: np.ndarray, *,
                 elide: bool, threads: int = 0, sessions: int = 1, config: dict[str, str] | None = None) -> Case:
    """`sessions` > 1: that many sessions (`threads` each) run the batch concurrently, one per core."""
    opened = [cpu_session(onnx_path, intra_op_threads=threads, elide=elide, config=config) for _ in range(sessions)]
    feeds = {opened[0][0].get_inputs()[0].name: normalised(version, uint8_patches)}
    return Case(label, [s for s, _ in opened], feeds, sessions * len(uint8_patches), version.metadata.precision,
                "network", threads, opened[0][1])


def serving_case(label: str, version: ModelVersion, uint8_patches: np.ndarray, *, elide: bool, threads: int = 0,
                 sessions: int = 1, config: dict[str, str] | None = None) -> Case:
    from service.graph import GRAPH_INPUT, build_serving_model

    serving = build_serving_model(onnx.load(str(version.onnx_path)), version.metadata)
    opened = [cpu_session(serving, intra_op_threads=threads, elide=elide, config=config) for _ in range(sessions)]
    return Case(label, [s for s, _ in opened], {GRAPH_INPUT: uint8_patches}, sessions * len(uint8_patches),
                version.metadata.precision, "serving", threads, opened[0][1])


def summarise(case: Case, wall: Sequence[float], roof_gflops: Sequence[float]) -> dict[str, Any]:
    """crops/s and images/s (median and best), and the ratio to the roof measured in the same rounds."""
    import statistics

    images = [case.crops / CROPS_PER_IMAGE / w for w in wall]
    roof_images = [g / GFLOP_PER_TEN_CROP_IMAGE for g in roof_gflops]
    return {
        **case.describe(),
        "crops_per_s_median": case.crops / statistics.median(wall),
        "crops_per_s_best": case.crops / min(wall),
        "images_per_s_median": statistics.median(images),
        "images_per_s_best": max(images),
        "x_roof_median": statistics.median(i / r for i, r in zip(images, roof_images, strict=True)),
        "x_roof_best": max(images) / max(roof_images),
    }
