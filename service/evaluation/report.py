"""Per-image results → the paper's numbers: top-1/top-5 accuracy and error per crop scheme, per class, and
the confusion matrix; written as a table, a JSON report, a CSV and (optionally) a PNG.

The JSON report (``--report``)::

    {
      "model":   {"name", "version", "precision", "provider"},
      "backend": "in-process" | "http",   "url": null | "http://...",
      "dataset": {"path", "layout", "ground_truth", "samples"},
      "crops": {
        "ten":    {"images", "top1", "top5", "top1_error", "top5_error", "images_per_second",
                   "per_class": {"<label id>": {"name", "images", "top1", "top5"}}},
        "center": {...}
      },
      "failed":  {"count", "files": [{"path", "reason"}]},
      "seconds": wall-clock seconds of the run (model loading excluded)
    }

Accuracies are fractions in [0, 1]; ``top1_error = 1 - top1``. A failed file counts in no scheme's
``images``. With ``--crops both`` the two schemes come from one pass over the data (each image decoded
once), so they share the run's wall-clock time and ``images_per_second``; run one scheme alone to time it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_store import Label
from service.evaluation.backends import EvaluatedImage, ModelInfo


class SchemeStats:
    """Counts for one crop scheme: the top-1 confusion matrix (rows: true class) and top-5 hits per class."""

    def __init__(self, num_classes: int) -> None:
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.top5_hits = np.zeros(num_classes, dtype=np.int64)

    def add(self, target: int, predicted: Sequence[int]) -> None:
        self.confusion[target, predicted[0]] += 1
        self.top5_hits[target] += target in predicted[:5]

    @property
    def per_class_images(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return float(np.trace(self.confusion) / self.images) if self.images else 0.0

    @property
    def top5(self) -> float:
        return float(self.top5_hits.sum() / self.images) if self.images else 0.0


class Evaluation:
    """Accumulates `EvaluatedImage`s as they arrive (in any order) and builds the report at the end."""

    def __init__(self, labels: Sequence[Label], schemes: Sequence[str]) -> None:
        self.labels = list(labels)
        self.schemes = list(schemes)
        self.stats = {s: SchemeStats(len(self.labels)) for s in self.schemes}
        self.failed: list[tuple[str, str]] = []
        self.results: list[EvaluatedImage] = []

    def add(self, result: EvaluatedImage) -> None:
        self.results.append(result)
        if not result.ok:
            self.failed.append((str(result.path), result.error or "unknown error"))
            return
        for scheme in self.schemes:
            self.stats[scheme].add(result.target, result.topk[scheme].indices)

    def report(self, model: ModelInfo, backend: str, url: str | None, dataset: dict[str, Any],
               seconds: float) -> dict[str, Any]:
        crops = {}
        for scheme, st in self.stats.items():
            per_class = {}
            counts = st.per_class_images
            for i in np.flatnonzero(counts):
                per_class[self.labels[i].id] = {
                    "name": self.labels[i].name,
                    "images": int(counts[i]),
                    "top1": float(st.confusion[i, i] / counts[i]),
                    "top5": float(st.top5_hits[i] / counts[i]),
                }
            crops[scheme] = {
                "images": st.images,
                "top1": st.top1,
                "top5": st.top5,
                "top1_error": 1.0 - st.top1 if st.images else 0.0,
                "top5_error": 1.0 - st.top5 if st.images else 0.0,
                "images_per_second": st.images / seconds if seconds > 0 else 0.0,
                "per_class": per_class,
            }
        return {
            "model": {"name": model.name, "version": model.version, "precision": model.precision,
                      "provider": model.provider},
            "backend": backend,
            "url": url,
            "dataset": dataset,
            "crops": crops,
            "failed": {"count": len(self.failed),
                       "files": [{"path": p, "reason": r} for p, r in sorted(self.failed)]},
            "seconds": seconds,
        }


CROP_TITLES = {"ten": "10-crop", "center": "centre crop"}


def format_table(report: dict[str, Any]) -> str:
    """The final table: one row per crop scheme."""
    header = (f"{'crops':<12} {'images':>8} {'top-1':>8} {'top-5':>8} {'top-1 err':>10} {'top-5 err':>10} "
              f"{'images/s':>9}")
    lines = [header, "-" * len(header)]
    for scheme, m in report["crops"].items():
        lines.append(
            f"{CROP_TITLES.get(scheme, scheme):<12} {m['images']:>8} {m['top1']:>8.2%} {m['top5']:>8.2%} "
            f"{m['top1_error']:>10.2%} {m['top5_error']:>10.2%} {m['images_per_second']:>9.1f}"
        )
    model = report["model"]
    lines.append(f"model {model['name']} v{model['version']} ({model['precision']}, {model['provider']}), "
                 f"backend {report['backend']}; {report['failed']['count']} file(s) failed")
    return "\n".join(lines)


def write_json(path: Path, report: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def write_confusion_csv(path: Path, evaluation: Evaluation) -> None:
    """One block per crop scheme: ``crops, true_class, <predicted label id>...`` with top-1 counts."""
    ids = [lab.id for lab in evaluation.labels]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["crops", "true_class", *ids])
        for scheme, st in evaluation.stats.items():
            for i, row in enumerate(st.confusion):
                writer.writerow([scheme, ids[i], *row.tolist()])


def write_plot(path: Path, evaluation: Evaluation) -> None:
    """Per-class top-1 accuracy for each scheme, and the confusion matrix of the first scheme (row-normalised)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'alexnet-serving[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = evaluation.stats[evaluation.schemes[0]]
    present = np.flatnonzero(first.per_class_images)
    names = [evaluation.labels[i].name for i in present]
    few = len(present) <= 40
    fig, (ax_bar, ax_cm) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(evaluation.schemes)
    for k, scheme in enumerate(evaluation.schemes):
        st = evaluation.stats[scheme]
        acc = np.diag(st.confusion)[present] / np.maximum(st.per_class_images[present], 1)
        ax_bar.bar(np.arange(len(present)) + k * width, acc, width,
                   label=f"{CROP_TITLES.get(scheme, scheme)} (top-1 {st.top1:.1%})")
    ax_bar.set_ylim(0, 1)
    ax_bar.set_ylabel("top-1 accuracy")
    ax_bar.set_title("per-class top-1 accuracy")
    if few:
        ax_bar.set_xticks(np.arange(len(present)) + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=8)
    else:
        ax_bar.set_xlabel(f"{len(present)} classes")
    ax_bar.legend(loc="lower right")
    cm = first.confusion[np.ix_(present, present)] / first.per_class_images[present][:, None]
    image = ax_cm.imshow(cm, cmap="viridis", vmin=0, vmax=1)
    ax_cm.set_title(f"confusion matrix, {CROP_TITLES.get(evaluation.schemes[0], evaluation.schemes[0])} "
                    "(row-normalised)")
    ax_cm.set_xlabel("predicted")
    ax_cm.set_ylabel("true")
    if few:
        ax_cm.set_xticks(range(len(present)), names, rotation=60, ha="right", fontsize=8)
        ax_cm.set_yticks(range(len(present)), names, fontsize=8)
    fig.colorbar(image, ax=ax_cm, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
