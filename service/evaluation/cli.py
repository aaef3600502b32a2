"""`alexnet-eval`: top-1/top-5 error of a model over a labelled validation folder, 10-crop and centre crop.

    alexnet-eval VAL_DIR (--model-store DIR | --url URL) [--model-name NAME] [--model-version N]
                 [--ground-truth FILE [--synsets FILE]] [--crops ten|center|both] [--report out.json]
                 [--confusion out.csv] [--plot out.png] [--limit N] [--workers N] [--batch-size N]
                 [--providers P1,P2]

Everything that can be wrong with the setup (model, service, folder, classes, ground truth, output paths)
is checked before the first image is decoded; such errors exit with status 2. Files that cannot be read
are counted and listed in the report and do not stop the run. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alexnet_store.vocabulary import CROP_SCHEMES
from service.evaluation.backends import Backend, BackendError, HttpBackend, InProcessBackend
from service.evaluation.data import EvalDataError, EvalSet, load_eval_set
from service.evaluation.report import Evaluation, format_table, write_confusion_csv, write_json, write_plot

USAGE_ERROR = 2
RUN_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alexnet-eval",
        description="Top-1/top-5 accuracy and error of a model over a labelled validation folder, with the paper's "
                    "10-crop evaluation and a single centre crop side by side.",
        epilog="Layouts: VAL_DIR/<class>/<image> (class = label id such as a wnid, or label name), or flat "
               "ILSVRC2012_val_*.JPEG files with --ground-truth LOC_val_solution.csv, or the devkit's "
               "ILSVRC2012_validation_ground_truth.txt plus --synsets meta.mat (its IDs are not the model's "
               "class indices). Exit status: 0 after a run (even with unreadable files), 2 for usage/setup errors, "
               "1 when the service fails mid-run.",
    )
    p.add_argument("val_dir", type=Path, metavar="VAL_DIR", help="validation images (see the layouts below)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-store", type=Path, metavar="DIR",
                        help="evaluate in this process with ONNX Runtime, from this store")
    source.add_argument("--url", help="evaluate through a running service, e.g. http://127.0.0.1:8000")
    p.add_argument("--model-name", metavar="NAME",
                   help="model in the store or the service (default: the only one there)")
    p.add_argument("--model-version", type=int, metavar="N",
                   help="version (default: the store's newest, or the service's default: its newest loaded)")
    p.add_argument("--ground-truth", type=Path, metavar="FILE",
                   help="flat layout: LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt "
                        "(default: either one found in VAL_DIR)")
    p.add_argument("--synsets", type=Path, metavar="FILE",
                   help="ILSVRC2012_ID → wnid for the devkit's ground truth: the devkit's meta.mat, or a text file "
                        "with one wnid per line in ID order (or 'wnid ID ...' lines)")
    p.add_argument("--crops", choices=["ten", "center", "both"], default="both",
                   help="the paper's ten patches, the centre patch, or both from one decode (default: both)")
    p.add_argument("--report", type=Path, metavar="FILE", help="write the JSON report here")
    p.add_argument("--confusion", type=Path, metavar="FILE", help="write the top-1 confusion matrix (CSV) here")
    p.add_argument("--plot", type=Path, metavar="FILE",
                   help="write a PNG of per-class accuracy and the confusion matrix (needs matplotlib: the 'plot' "
                        "extra)")
    p.add_argument("--limit", type=_positive, metavar="N",
                   help="evaluate at most N images, taken round-robin over the classes")
    p.add_argument("--workers", type=_positive, metavar="N",
                   help="decode threads (in-process; default: CPU cores, at most 8) or requests in flight (--url; "
                        "default 4)")
    p.add_argument("--batch-size", type=_positive, metavar="N",
                   help="images per model run (in-process; default 16) or per request (--url; default 8)")
    p.add_argument("--providers", type=_providers, metavar="P1,P2",
                   help="ONNX Runtime execution providers in order of preference, comma-separated, as for "
                        "alexnet-serve (in-process; default 'auto': CUDA first when this onnxruntime build has it, "
                        "then CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _providers(text: str) -> list[str] | None:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected provider names, e.g. CPUExecutionProvider")
    return None if names == ["auto"] else names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def make_backend(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Backend:
    if args.url is not None:
        if args.providers is not None:
            parser.error("--providers applies to --model-store; the service at --url runs on its own providers")
        return HttpBackend(args.url, args.model_name, args.model_version, workers=args.workers,
                           batch_size=args.batch_size or 8)
    return InProcessBackend(args.model_store, args.model_name, args.model_version, providers=args.providers,
                            workers=args.workers, batch_size=args.batch_size or 16)


def run_evaluation(backend: Backend, eval_set: EvalSet, schemes: Sequence[str],
                   progress: bool = True) -> tuple[Evaluation, float]:
    """Evaluate every sample; returns the accumulated results and the wall-clock seconds of the run."""
    from tqdm import tqdm

    evaluation = Evaluation(backend.describe().labels, schemes)
    with tqdm(total=len(eval_set.samples), unit="img", disable=not progress, dynamic_ncols=True,
              desc="/".join(schemes)) as bar:

        def on_result(result) -> None:
            evaluation.add(result)
            bar.update(1)
            if not result.ok:
                bar.set_postfix(failed=len(evaluation.failed))

        start = time.perf_counter()
        backend.evaluate(eval_set.samples, schemes, on_result)
        seconds = time.perf_counter() - start
    return evaluation, seconds


def _check_outputs(args: argparse.Namespace) -> None:
    for path in (args.report, args.confusion, args.plot):
        if path is not None and not path.resolve().parent.is_dir():
            raise EvalDataError(f"cannot write {path}: folder {path.resolve().parent} does not exist")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise EvalDataError("--plot needs matplotlib: pip install 'alexnet-serving[plot]'") from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    schemes = list(CROP_SCHEMES) if args.crops == "both" else [args.crops]
    backend = make_backend(args, parser)
    try:
        # setup: everything that can be wrong is found here, before any image is decoded
        info = backend.describe()
        eval_set = load_eval_set(args.val_dir, info.labels, args.ground_truth, args.synsets, args.limit)
        _check_outputs(args)
        backend.start()
        info = backend.describe()
    except (BackendError, EvalDataError) as exc:
        print(f"alexnet-eval: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    classes = len({s.target for s in eval_set.samples})
    print(f"evaluating {info.name} v{info.version} ({info.precision}, {info.provider}) via {backend.kind} on "
          f"{len(eval_set.samples)} images of {classes} classes ({eval_set.layout} layout), crops: {args.crops}",
          file=sys.stderr)
    try:
        evaluation, seconds = run_evaluation(backend, eval_set, schemes, progress=not args.no_progress)
    except BackendError as exc:
        print(f"alexnet-eval: error: {exc}", file=sys.stderr)
        return RUN_ERROR
    finally:
        backend.close()
    dataset: dict[str, Any] = {
        "path": str(args.val_dir), "layout": eval_set.layout,
        "ground_truth": str(eval_set.ground_truth) if eval_set.ground_truth else None,
        "samples": len(eval_set.samples),
    }
    report = evaluation.report(info, backend.kind, args.url, dataset, seconds)
    print(format_table(report))
    for path, reason in sorted(evaluation.failed)[:10]:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    if len(evaluation.failed) > 10:
        print(f"  ... and {len(evaluation.failed) - 10} more (see the report)", file=sys.stderr)
    if args.report:
        write_json(args.report, report)
    if args.confusion:
        write_confusion_csv(args.confusion, evaluation)
    if args.plot:
        write_plot(args.plot, evaluation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
