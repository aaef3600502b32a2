# AlexNet serving and training images. Targets:
#
#   serve  (default)  the ONNX Runtime service: FastAPI + uvicorn + onnxruntime-gpu with the CUDA 13 / cuDNN 9
#                     user-space libraries from PyPI (no CUDA base image, no PyTorch); runs on the CPU where
#                     there is no GPU. --build-arg VARIANT=cpu builds a slim CPU-only image instead
#                     (the plain onnxruntime wheel, no CUDA libraries).
#   train             PyTorch + the export tools; by default builds the demo model into /models.
#
# Build through compose (docker-compose.yml names the images), or with BuildKit / buildx:
#   docker build --target serve -t alexnet-serving:serve .
#   docker build --target serve --build-arg VARIANT=cpu -t alexnet-serving:serve-cpu .
#   docker build --target train -t alexnet-serving:train .
#
# Needs BuildKit (RUN --mount cache mounts; Dockerfile frontend 1.2+, Docker 20.10+). No `# syntax=` line on
# purpose: the builder's built-in frontend is used, so nothing is pulled from a registry.
# Versions are pinned by scripts/container-constraints.txt, generated from the tested venv
# (scripts/container-lock.sh). Works on the official python:3.11-slim-bookworm image and on images whose
# Python is Debian's /usr/bin/python3: everything runs in a venv at /opt/venv.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# --- requirements: the extras' requirement lists, from pyproject.toml. Only these small files feed the
# --- dependency layers, so an edit of pyproject.toml that leaves the dependencies alone keeps the cache.
FROM base AS requirements
ARG VARIANT=gpu
COPY pyproject.toml scripts/container-requirements.py /tmp/build/
RUN set -eu; \
    case "$VARIANT" in \
      gpu) python /tmp/build/container-requirements.py --pyproject /tmp/build/pyproject.toml serve gpu ;; \
      cpu) python /tmp/build/container-requirements.py --pyproject /tmp/build/pyproject.toml --cpu serve ;; \
      *) echo "VARIANT must be gpu or cpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac >/tmp/build/serve.txt; \
    python /tmp/build/container-requirements.py --pyproject /tmp/build/pyproject.toml train gpu >/tmp/build/train.txt

# --- wheel: the project itself, built once for both images (code changes invalidate only this and below)
FROM base AS wheel
WORKDIR /src
COPY scripts/container-constraints.txt /tmp/build/constraints.txt
COPY pyproject.toml README.md ./
COPY alexnet_store ./alexnet_store
COPY service ./service
COPY training ./training
COPY bench ./bench
RUN --mount=type=cache,target=/root/.cache/pip \
    PIP_CONSTRAINT=/tmp/build/constraints.txt python -m pip wheel --no-deps --wheel-dir /wheels .

# --- train-deps / train: PyTorch, the exporter and the demo ---------------------------------------------
FROM base AS train-deps
COPY scripts/container-constraints.txt /tmp/build/constraints.txt
COPY --from=requirements /tmp/build/train.txt /tmp/build/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --constraint /tmp/build/constraints.txt pip \
 && /opt/venv/bin/python -m pip install --constraint /tmp/build/constraints.txt --requirement /tmp/build/requirements.txt

FROM base AS train
LABEL org.opencontainers.image.title="alexnet-serving-train" \
      org.opencontainers.image.description="AlexNet training and ONNX export (PyTorch)" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 alexnet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin alexnet \
 && mkdir -p /models /work \
 && chown 10001:10001 /models \
 && chmod 1777 /work
COPY --from=train-deps /opt/venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    /opt/venv/bin/python -m pip install --no-deps --no-cache-dir /tmp/wheels/*.whl
COPY scripts/container-train-entrypoint.sh /usr/local/bin/alexnet-train-entrypoint
RUN chmod 0755 /usr/local/bin/alexnet-train-entrypoint
# HOME: torch, matplotlib and friends want a writable home; the process runs as the store's owner,
# who has no passwd entry in the image.
ENV ALEXNET_MODEL_STORE=/models \
    ORT_DISABLE_TELEMETRY=1 \
    HOME=/tmp
WORKDIR /work
# Starts as root only to drop to the owner of the mounted /models (see the entrypoint).
ENTRYPOINT ["alexnet-train-entrypoint"]
CMD ["alexnet-demo", "--model-store", "/models"]

# --- serve-deps: the serving dependencies in /opt/venv (the big layer; cached until they change)
FROM base AS serve-deps
COPY scripts/container-constraints.txt /tmp/build/constraints.txt
COPY --from=requirements /tmp/build/serve.txt /tmp/build/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --constraint /tmp/build/constraints.txt pip \
 && /opt/venv/bin/python -m pip install --constraint /tmp/build/constraints.txt --requirement /tmp/build/requirements.txt \
 && /opt/venv/bin/python -m pip uninstall --yes setuptools \
 && if /opt/venv/bin/python -m pip show --quiet torch 2>/dev/null; then echo "torch must not be in the serving image" >&2; exit 1; fi

# --- serve: what the service needs, nothing else. Last stage, so `docker build .` builds it. ------------
FROM base AS serve
ARG VARIANT=gpu
LABEL org.opencontainers.image.title="alexnet-serving" \
      org.opencontainers.image.description="AlexNet 10-crop ONNX Runtime service (FastAPI/uvicorn), no PyTorch" \
      org.opencontainers.image.licenses="MIT" \
      alexnet.variant="${VARIANT}"
# a fixed numeric uid/gid, so orchestrators can check runAsNonRoot
RUN groupadd --system --gid 10001 alexnet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin alexnet \
 && mkdir -p /models
COPY --from=serve-deps /opt/venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    /opt/venv/bin/python -m pip install --no-deps --no-cache-dir /tmp/wheels/*.whl
COPY scripts/container-healthcheck.py /usr/local/bin/alexnet-healthcheck
RUN chmod 0755 /usr/local/bin/alexnet-healthcheck
# onnxruntime-gpu finds the CUDA 13 / cuDNN 9 libraries of the nvidia-* wheels here (the driver's libcuda
# comes from the NVIDIA Container Toolkit at run time); the directories do not exist in VARIANT=cpu.
# ORT_DISABLE_TELEMETRY: ONNX Runtime's telemetry stays off (and stops warning that it cannot write its
# device id: the service user has no home and the root filesystem may be read-only).
# ALEXNET_LOG_FORMAT=json: one JSON object per log line, what a cluster's log collector parses (docs/api.md).
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    ORT_DISABLE_TELEMETRY=1 \
    ALEXNET_MODEL_STORE=/models \
    ALEXNET_HOST=0.0.0.0 \
    ALEXNET_PORT=8000 \
    ALEXNET_WORKERS=1 \
    ALEXNET_LOG_LEVEL=info \
    ALEXNET_LOG_FORMAT=json
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["alexnet-healthcheck"]
ENTRYPOINT ["alexnet-serve"]
