#!/usr/bin/env bash
# Wheels the lent GPU machine may lack for the experiment (scripts/device-experiment.sh installs the ones it lacks):
# onnxscript and its dependencies, which torch.onnx.export needs to write the ONNX file (the machine has PyTorch,
# onnx and onnxruntime, but no registry to fetch the rest). CPython 3.12 manylinux wheels, 1.5 MB, in .whl/
# (git-ignored; the call carries it). Versions follow the project's .venv, so the GPU machine exports with what
# the tests exported with.
#
#   bash scripts/device-wheels.sh                 # here, from the project root: fills .whl/
#   bash ../shared/device/web-stack-wheels.sh     # optional: FastAPI & co. too, so the experiment serves and benchmarks
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
mkdir -p .whl
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
specs=()
for p in onnxscript onnx-ir ml-dtypes packaging; do
  v=$("$py" -m pip show "$p" 2>/dev/null | awk '/^Version:/ {print $2}' || true)
  specs+=("${p}${v:+==$v}")
done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${specs[@]}"
ls -la .whl
echo "now: carry [\".whl\", \"data/fashion-mnist\"] in the device call (docs/experiment.md#on-a-gpu)"
