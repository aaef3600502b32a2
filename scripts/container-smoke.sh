#!/usr/bin/env bash
# Container smoke test (`make container-smoke`): the images build, the serving container runs as non-root,
# becomes healthy and answers /predict exactly like the service run from the host's venv, the compose
# stack comes up healthy (CPU override) and goes down, and the training image writes a model version.
#
#   scripts/container-smoke.sh                    # ~2 min with warm caches (first run: image downloads)
#   SMOKE_TRAIN=demo scripts/container-smoke.sh   # also train the demo model in the container (~7 min)
#   SMOKE_TRAIN=none scripts/container-smoke.sh   # skip the training image altogether
#
# Needs: docker with the compose v2 plugin (>= 2.24), and the project's venv (`make install`) for the
# reference service and the test model. Publishes on 127.0.0.1 only (ports SMOKE_PORT..SMOKE_PORT+2,
# default 18080..18082), uses its own compose project (alexnet-smoke), never touches ./model_store, and
# removes its containers, networks and temporary files on exit, failed or not. The images stay (tagged
# alexnet-serving:{serve,serve-cpu,train}), as after `docker compose build`; dangling ones it replaced
# are pruned.
#
# Environment: VENV (default .venv), SMOKE_PORT (18080), SMOKE_TRAIN (export|demo|none; default export),
# SMOKE_IMAGES (JPEGs to send; default: three of ../shared/data/imagenet-samples, else one made with
# Pillow), SMOKE_TIMEOUT (seconds to wait for health, default 180).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
PORT0=${SMOKE_PORT:-18080}
HOST_PORT=$PORT0 RUN_PORT=$((PORT0 + 1)) COMPOSE_PORT=$((PORT0 + 2))
TRAIN=${SMOKE_TRAIN:-export}
TIMEOUT=${SMOKE_TIMEOUT:-180}
PROJECT=alexnet-smoke
RUN_NAME=alexnet-smoke-serve
CTX_TAG=alexnet-smoke-context:tmp
COMPOSE_CPU=(docker compose -p "$PROJECT" -f docker-compose.yml -f docker-compose.cpu.yml)

log() { printf '\n[container-smoke] %s\n' "$*"; }
die() { printf '[container-smoke] FAILED: %s\n' "$*" >&2; exit 1; }
human() { awk -v b="$1" 'BEGIN { split("B KB MB GB TB", u); i = 1; while (b >= 1000 && i < 5) { b /= 1000; i++ } printf "%.2f %s", b, u[i] }'; }

case $TRAIN in export|demo|none) ;; *) die "SMOKE_TRAIN must be export, demo or none (got '$TRAIN')";; esac
command -v docker >/dev/null || die "docker is not installed (on this project's dev machine: bash ../shared/container/setup.sh)"
docker info >/dev/null 2>&1 || die "the docker daemon is not reachable"
docker compose version >/dev/null 2>&1 || die "the docker compose v2 plugin is missing"
[ -x "$VENV/bin/alexnet-serve" ] && [ -x "$VENV/bin/alexnet-export" ] || die "no project venv at $VENV (run: make install)"
PY="$VENV/bin/python"
for port in "$HOST_PORT" "$RUN_PORT" "$COMPOSE_PORT"; do
  ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "port $port on 127.0.0.1 is in use (set SMOKE_PORT)"
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/alexnet-container-smoke.XXXXXX")
HOST_PID=
cleanup() {
  local rc=$?
  set +e
  [ -n "$HOST_PID" ] && kill "$HOST_PID" 2>/dev/null && wait "$HOST_PID" 2>/dev/null
  if [ "$rc" != 0 ]; then
    echo "[container-smoke] --- logs of what failed ---" >&2
    docker logs --tail 40 "$RUN_NAME" 2>&1 | sed 's/^/  serve container: /' >&2
    "${COMPOSE_CPU[@]}" --profile train logs --tail 40 2>&1 | sed 's/^/  compose: /' >&2
    [ -f "$TMP/host-serve.log" ] && tail -20 "$TMP/host-serve.log" | sed 's/^/  host service: /' >&2
  fi
  docker rm -f "$RUN_NAME" >/dev/null 2>&1
  MODEL_STORE="$TMP/store" "${COMPOSE_CPU[@]}" --profile train down --volumes --remove-orphans >/dev/null 2>&1
  docker image rm "$CTX_TAG" >/dev/null 2>&1
  # dangling images left by rebuilds of ours (and only ours)
  docker image prune --force --filter "label=org.opencontainers.image.title=alexnet-serving" >/dev/null 2>&1
  docker image prune --force --filter "label=org.opencontainers.image.title=alexnet-serving-train" >/dev/null 2>&1
  rm -rf "$TMP"
  if [ "$rc" = 0 ]; then echo "[container-smoke] PASSED"; else echo "[container-smoke] FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_healthy() {  # container, timeout
  local c=$1 deadline=$((SECONDS + $2)) status
  while :; do
    status=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c" 2>/dev/null) \
      || die "container $c is gone"
    case $status in
      "running healthy") return 0 ;;
      exited*|dead*) die "container $c stopped before it became healthy ($status)" ;;
    esac
    [ $SECONDS -lt $deadline ] || die "container $c not healthy after $2 s ($status)"
    sleep 2
  done
}
wait_http() {  # url, timeout
  local deadline=$((SECONDS + $2))
  until "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$1 did not answer 200 within $2 s"
    [ -z "$HOST_PID" ] || kill -0 "$HOST_PID" 2>/dev/null || die "the host service exited (log: $TMP/host-serve.log)"
    sleep 1
  done
}
image_size() { docker image inspect -f '{{.Size}}' "$1"; }

# --- 1. the build context ---------------------------------------------------------------------------------
log "1/7 build context: .dockerignore keeps data, checkpoints, stores, venvs and .git out"
printf 'FROM python:3.11-slim-bookworm\nCOPY . /ctx\n' >"$TMP/Dockerfile.context"
DOCKER_BUILDKIT=0 docker build -q -f "$TMP/Dockerfile.context" -t "$CTX_TAG" . >/dev/null 2>"$TMP/context.log" \
  || docker build -q -f "$TMP/Dockerfile.context" -t "$CTX_TAG" . >/dev/null 2>>"$TMP/context.log" \
  || { cat "$TMP/context.log" >&2; die "could not build the context probe"; }
docker run --rm --entrypoint find "$CTX_TAG" /ctx -type f -printf '%P\t%s\n' >"$TMP/context.txt"
bad=$(cut -f1 "$TMP/context.txt" | grep -E '(^|/)(\.git|\.venv|venv|model_store|data|datasets|runs|checkpoints|__pycache__)/|\.(onnx|pt|pth|ckpt|npz)$' || true)
[ -z "$bad" ] || die "the build context contains what .dockerignore should keep out: $(head -5 <<<"$bad" | tr '\n' ' ')"
for need in pyproject.toml README.md service/app.py alexnet_store/store.py training/export.py \
            scripts/container-constraints.txt scripts/container-healthcheck.py; do
  grep -q "^$need	" "$TMP/context.txt" || die "the build context lacks $need"
done
echo "context: $(wc -l <"$TMP/context.txt") files, $(human "$(awk -F'\t' '{s += $2} END {print s + 0}' "$TMP/context.txt")")"

# --- 2. the serving images --------------------------------------------------------------------------------
log "2/7 build the serving images (GPU-capable default, and the CPU-only variant)"
docker compose -p "$PROJECT" build api
"${COMPOSE_CPU[@]}" build api
for img in alexnet-serving:serve alexnet-serving:serve-cpu; do
  docker run --rm --entrypoint python "$img" -c \
    'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is not None)' \
    || die "$img contains PyTorch"
done
missing=$(docker run --rm --entrypoint sh alexnet-serving:serve -c \
  'ldd /opt/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so | grep "not found"' || true)
[ "$(awk '{print $1}' <<<"$missing" | tr -d '\n')" = "libcuda.so.1" ] \
  || die "the CUDA provider of the GPU image lacks libraries besides the driver's libcuda.so.1: $missing"
SERVE_SIZE=$(image_size alexnet-serving:serve) CPU_SIZE=$(image_size alexnet-serving:serve-cpu)
echo "alexnet-serving:serve      $(human "$SERVE_SIZE") (onnxruntime-gpu + CUDA 13 / cuDNN 9 from pip, no PyTorch)"
echo "alexnet-serving:serve-cpu  $(human "$CPU_SIZE") (onnxruntime, no CUDA libraries, no PyTorch)"
echo "the GPU image's CUDA provider resolves every library except libcuda.so.1 (the driver's, from the NVIDIA Container Toolkit)"

# --- 3. a model, and the reference service from the host venv -----------------------------------------------
log "3/7 export a random-init test model, start the reference service from $VENV on 127.0.0.1:$HOST_PORT"
mkdir -p "$TMP/store"
"$VENV/bin/alexnet-export" --random-init --num-classes 10 --init kaiming --seed 1 --name smoke \
  --model-store "$TMP/store" >"$TMP/export.log" 2>&1 || { cat "$TMP/export.log" >&2; die "alexnet-export failed"; }
echo "model: $(tail -1 "$TMP/export.log")"
images=()
if [ -n "${SMOKE_IMAGES:-}" ]; then
  read -r -a images <<<"$SMOKE_IMAGES"
elif [ -d ../shared/data/imagenet-samples ]; then
  while IFS= read -r f; do images+=("$f"); done < <(find ../shared/data/imagenet-samples -type f -iname '*.jp*g' | sort | head -3)
fi
if [ ${#images[@]} = 0 ]; then
  "$PY" - "$TMP/smoke.jpg" <<'EOF'
import sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
y, x = np.mgrid[0:375, 0:500]
rgb = np.stack([(x * 255 // 499), (y * 255 // 374), rng.integers(0, 256, (375, 500))], axis=-1).astype(np.uint8)
Image.fromarray(rgb).save(sys.argv[1], quality=90)
EOF
  images=("$TMP/smoke.jpg")
fi
echo "images: ${images[*]}"
"$VENV/bin/alexnet-serve" --model-store "$TMP/store" --host 127.0.0.1 --port "$HOST_PORT" >"$TMP/host-serve.log" 2>&1 &
HOST_PID=$!
wait_http "http://127.0.0.1:$HOST_PORT/health/ready" "$TIMEOUT"

# --- 4. the serving container: non-root, healthy, same predictions ------------------------------------------
log "4/7 docker run alexnet-serving:serve on 127.0.0.1:$RUN_PORT (store mounted read-only)"
docker run -d --name "$RUN_NAME" -p "127.0.0.1:$RUN_PORT:8000" -v "$TMP/store:/models:ro" alexnet-serving:serve >/dev/null
start=$SECONDS
wait_healthy "$RUN_NAME" "$TIMEOUT"
echo "healthy after $((SECONDS - start)) s (Docker HEALTHCHECK on /health/ready)"
uid=$(docker exec "$RUN_NAME" sh -c 'awk "/^Uid:/ {print \$2}" /proc/1/status')
[ "$uid" != 0 ] || die "the service runs as root"
echo "runs as uid $uid ($(docker exec "$RUN_NAME" id -un)), image USER $(docker inspect -f '{{.Config.User}}' "$RUN_NAME")"
"$PY" scripts/container-compare.py "http://127.0.0.1:$HOST_PORT" "http://127.0.0.1:$RUN_PORT" --top-k 10 "${images[@]}" \
  || die "the container's predictions differ from the host service's"
docker rm -f "$RUN_NAME" >/dev/null

# --- 5. docker compose, CPU override ------------------------------------------------------------------------
log "5/7 docker compose -f docker-compose.yml -f docker-compose.cpu.yml up (project $PROJECT, 127.0.0.1:$COMPOSE_PORT)"
docker compose -p "$PROJECT" config --quiet  # the GPU file alone is valid too
docker compose -p "$PROJECT" config | grep -q 'driver: nvidia' || die "docker-compose.yml has no nvidia GPU reservation"
export MODEL_STORE="$TMP/store" ALEXNET_PORT=$COMPOSE_PORT
start=$SECONDS
"${COMPOSE_CPU[@]}" up -d --wait --wait-timeout "$TIMEOUT" api
echo "api healthy after $((SECONDS - start)) s; $("${COMPOSE_CPU[@]}" ps --format '{{.Name}}: {{.Status}}' api)"
"$PY" scripts/container-compare.py "http://127.0.0.1:$HOST_PORT" "http://127.0.0.1:$COMPOSE_PORT" --top-k 10 "${images[@]}" \
  || die "the compose service's predictions differ from the host service's"
"${COMPOSE_CPU[@]}" down --remove-orphans
unset ALEXNET_PORT
kill "$HOST_PID" && wait "$HOST_PID" 2>/dev/null || true
HOST_PID=

# --- 6. the training image: a version in a mounted store, owned by the store's owner -------------------------
if [ "$TRAIN" = none ]; then
  log "6/7 training image: skipped (SMOKE_TRAIN=none)"
else
  log "6/7 the training image writes a model version into a mounted store, as the store's owner"
  "${COMPOSE_CPU[@]}" --profile train build train
  echo "alexnet-serving:train      $(human "$(image_size alexnet-serving:train)") (PyTorch + CUDA libraries)"
  mkdir -p "$TMP/train-store"
  if [ "$(id -u)" = 0 ]; then chown 12345:12345 "$TMP/train-store"; fi  # a non-root owner, as on a workstation
  owner=$(stat -c %u:%g "$TMP/train-store")
  export MODEL_STORE="$TMP/train-store"
  "${COMPOSE_CPU[@]}" --profile train run --rm train \
    alexnet-export --random-init --num-classes 10 --name smoke-train --model-store /models
  for f in metadata.json model.onnx; do
    [ -f "$TMP/train-store/smoke-train/1/$f" ] || die "the training container did not write smoke-train/1/$f"
  done
  got=$(find "$TMP/train-store" -mindepth 1 -printf '%U:%G\n' | sort -u | tr '\n' ' ')
  [ "$got" = "$owner " ] || die "files written by the training container belong to $got, not to the store's owner $owner"
  echo "alexnet-export in the training image wrote smoke-train/1, owned by $owner like the store"
  if [ "$TRAIN" = demo ]; then
    log "6/7 docker compose --profile train run --rm train (the demo model, ~7 min on 2 quiet cores)"
    start=$SECONDS
    "${COMPOSE_CPU[@]}" --profile train run --rm train
    [ -f "$TMP/train-store/digits/1/metadata.json" ] || die "the demo did not write digits/1"
    echo "demo model trained and exported in $((SECONDS - start)) s: $(find "$TMP/train-store/digits" -name metadata.json)"
    echo "owners: $(find "$TMP/train-store/digits" -printf '%U:%G\n' | sort -u | tr '\n' ' ')"
  fi
  unset MODEL_STORE
fi

# --- 7. done ----------------------------------------------------------------------------------------------
log "7/7 summary"
echo "serving image alexnet-serving:serve $(human "$SERVE_SIZE"), CPU-only alexnet-serving:serve-cpu $(human "$CPU_SIZE")"
echo "not exercised here unless this host has an NVIDIA GPU and the NVIDIA Container Toolkit: the GPU reservation"
echo "(bring it up with: docker compose up -d --build, then GET /health/ready shows the provider)"
