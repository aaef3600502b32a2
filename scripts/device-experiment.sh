#!/usr/bin/env bash
# The d2l book's Fashion-MNIST experiment on the lent GPU machine, in ONE device call (docs/experiment.md#on-a-gpu).
#
# Prepare here, once (data/ and .whl/ are git-ignored; together about 32 MB of the 64 MiB a call carries):
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
#   bash scripts/device-wheels.sh            # onnxscript & co., in case the machine lacks them (export needs them)
# The call (the device tool's `run`):
#   command: bash scripts/device-experiment.sh      carry: [".whl", "data/fashion-mnist"]      timeout_s: 600
#
# It trains, exports, evaluates and reports, in this order, as many of RUNS as the time allows: no network starts
# after START_BY seconds, and the whole experiment is stopped at BUDGET seconds (under the call's 600 s limit), so
# the report of every network that finished comes back. Into $OUT: report.md, report.json, experiment.log,
# environment.txt and, per network, metrics.csv/.jsonl and the alexnet-eval report (no checkpoints or models:
# they stay on the machine). Serving is off by default (BENCH=off): the machine has no FastAPI, and its onnxruntime
# runs on the CPU; BENCH=auto serves and benchmarks each version when .whl/ also holds the web stack
# (../shared/device/web-stack-wheels.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/experiment-out}
WORK=${WORK:-/tmp/experiment}
DATA=${DATA:-data/fashion-mnist}
RUNS=${RUNS:-d2l-alexnet:d2l,alexnet:paper:15,densenet:d2l,resnet18:d2l,googlenet:d2l,nin:d2l,vgg11:d2l}
BUDGET=${BUDGET:-560}
START_BY=${START_BY:-360}
EVAL_LIMIT=${EVAL_LIMIT:-2000}
BENCH=${BENCH:-off}  # auto: serve and benchmark each version when .whl/ brought the web stack (ORT on the CPU here)
EXTRA=${EXTRA:-}     # more bench.experiment options, e.g. EXTRA="--subset 2000 --epochs 1" for a dry run
mkdir -p "$OUT"

collect() {
  [ -d "$WORK" ] || return 0
  cp "$WORK"/report.md "$WORK"/report.json "$OUT"/ 2>/dev/null
  for run in "$WORK"/runs/*/; do
    [ -d "$run" ] || continue
    mkdir -p "$OUT/runs/$(basename "$run")"
    cp "$run"/metrics.csv "$run"/metrics.jsonl "$run"/eval-*.json "$run"/bench-*.json "$OUT/runs/$(basename "$run")/" \
      2>/dev/null
  done
  echo "device-experiment: results in \$OUT: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
}
trap collect EXIT

if [ ! -f "$DATA/t10k-labels-idx1-ubyte.gz" ] && [ ! -f "$DATA/t10k-labels-idx1-ubyte" ]; then
  echo "device-experiment: no Fashion-MNIST in $DATA: fill it here first (see the top of this script) and carry it" >&2
  exit 2
fi
# Wheels carried in .whl/: install the ones whose distribution this Python lacks (never shadow what it has).
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 - <<'PY' || exit 2
import importlib.metadata as md, pathlib, subprocess, sys
missing = []
for wheel in sorted(pathlib.Path(".whl").glob("*.whl")):
    try:
        md.distribution(wheel.name.split("-")[0])
    except md.PackageNotFoundError:
        missing.append(str(wheel))
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", "/tmp/site", *missing], check=True)
print("device-experiment: installed from .whl/:", ", ".join(pathlib.Path(m).name for m in missing) or "nothing")
PY
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 -c "import sys, torch, torchvision, onnx, onnxruntime; print(sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'onnx', onnx.__version__, 'onnxruntime',
onnxruntime.__version__, onnxruntime.get_available_providers()); import onnxscript; print('onnxscript', onnxscript.__version__)"
  nproc
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

rm -rf "$WORK"
timeout --signal=TERM --kill-after=20 "$BUDGET" \
  python3 -m bench.experiment --arch "$RUNS" --data "fashion-mnist:$DATA" --output "$WORK" \
    --eval-limit "$EVAL_LIMIT" --time-budget "$START_BY" --bench "$BENCH" --no-progress $EXTRA 2>&1 \
  | tee "$OUT/experiment.log"
status=${PIPESTATUS[0]}
if [ "$status" = 124 ]; then  # our own budget, not the call's limit: what finished is in the report
  echo "device-experiment: stopped at BUDGET=$BUDGET s; report.md holds every network that finished before"
  exit 0
fi
echo "device-experiment: bench.experiment exited with $status"
exit "$status"
