# Two commands do everything on a fresh machine (see README.md):
#   make serve   serve torchvision's AlexNet if its weights are in the torch hub cache, else the digits demo
#                (built first if model_store/ has none), then start the service
#   make test    lint, install the Debian packages some tests use (scripts/test-deps.sh), run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL_STORE ?= model_store
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve demo test lint bench experiment container-smoke replicas-kill-test replicas-bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,serve,dev,peers]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/alexnet-demo --model-store $(MODEL_STORE)

# torchvision's AlexNet weights in the torch hub cache ($TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth):
# imported (alexnet-import) and served with ImageNet's 1,000 classes; else the digits demo (bench/serve.py)
# (not echoed: the first line printed is the one that says which model is served)
serve: $(STAMP)
	@$(BIN)/python -m bench.serve --model-store $(MODEL_STORE) --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .

# scripts/test-deps.sh: apt-installs what is missing where it can (TEST_DEPS=skip: only report), else says what skips
test: lint
	bash scripts/test-deps.sh
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Build the container images and check them for real (needs docker + compose; see docs/containers.md)
container-smoke: $(STAMP)
	VENV=$(VENV) scripts/container-smoke.sh

# API replicas behind the balancer, for real (needs docker + compose; docs/deploy.md); e.g. REPLICAS_ARGS="--model-store model_store"
replicas-kill-test: $(STAMP)
	$(BIN)/python -m bench.replicas kill-test $(REPLICAS_ARGS)

replicas-bench: $(STAMP)
	$(BIN)/python -m bench.replicas bench $(REPLICAS_ARGS)

# The service against its ceiling, the naive baseline and its int8 variant, the v2 path and a rollover, in one run
# (docs/benchmark.md); e.g. BENCH_ARGS="--quick"
bench: $(STAMP)
	$(BIN)/alexnet-bench --int8 $(BENCH_ARGS)

# The d2l book's Fashion-MNIST experiment: train -> export -> alexnet-eval -> serve + bench, with a report
# (docs/experiment.md); e.g. ARCH=d2l-alexnet,alexnet:paper:15 EXPERIMENT_ARGS="--subset 2000 --epochs 1"
ARCH ?= d2l-alexnet,alexnet
experiment: $(STAMP)
	$(BIN)/python -m bench.experiment --arch $(ARCH) $(EXPERIMENT_ARGS)
