"""The container files, checked without Docker: Dockerfile stages, compose structure, .dockerignore coverage.

scripts/container-smoke.sh builds and runs the images for real (where Docker is available); these tests
keep the files consistent with the project in CI: the serving image stays free of PyTorch and runs as
non-root, every ALEXNET_* variable the containers set is a real service setting, the GPU reservation and
its CPU override stay in place, and the build context keeps data, checkpoints and venvs out.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from functools import cache
from pathlib import Path

import pytest
from support.containers import compose_env, compose_yaml, dockerfile_instructions, dockerfile_stages, stage_args

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
DOCKERIGNORE = REPO / ".dockerignore"
CONSTRAINTS = REPO / "scripts" / "container-constraints.txt"


# -- Dockerfile ------------------------------------------------------------------------------------------------
def test_dockerfile_stages_and_default_target():
    stages = dockerfile_stages()
    for name in ("base", "requirements", "wheel", "serve-deps", "serve", "train-deps", "train"):
        assert name in stages
    assert list(stages)[-1] == "serve", "the last stage is the default target of `docker build .`: serving"
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax=", text, re.MULTILINE), "a syntax directive pulls a frontend image"
    froms = [a.split()[0] for a in re.findall(r"^FROM\s+(.+)$", text, re.MULTILINE)]
    assert set(froms) <= {"${BASE_IMAGE}", *stages}, f"only the base image and own stages: {froms}"
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.MULTILINE)
    assert "/usr/local/bin/python" not in text, "Debian's python lives in /usr/bin: use the venv's or `python`"


def test_serving_stage_is_non_root_healthchecked_and_configurable():
    (user,) = stage_args("serve", "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid (runAsNonRoot can check it)"
    (health,) = stage_args("serve", "HEALTHCHECK")
    assert "alexnet-healthcheck" in health
    assert any("container-healthcheck.py /usr/local/bin/alexnet-healthcheck" in a for a in stage_args("serve", "COPY"))
    assert "/health/ready" in (REPO / "scripts" / "container-healthcheck.py").read_text()
    (entrypoint,) = stage_args("serve", "ENTRYPOINT")
    assert entrypoint == '["alexnet-serve"]'
    env = " ".join(stage_args("serve", "ENV"))
    for setting in ("ALEXNET_MODEL_STORE=/models", "ALEXNET_HOST=0.0.0.0", "ALEXNET_PORT=8000",
                    "ALEXNET_WORKERS=", "ALEXNET_LOG_LEVEL=", "ALEXNET_LOG_FORMAT=json"):
        assert setting in env
    assert "nvidia/cu13/lib" in env and "nvidia/cudnn/lib" in env, "onnxruntime-gpu must find the pip CUDA libraries"
    assert stage_args("serve", "EXPOSE") == ["8000"]


def test_dependency_layers_come_before_the_code():
    code = ("alexnet_store", "service", "training", "bench")
    for stage in ("requirements", "serve-deps", "train-deps"):
        copies = " ".join(stage_args(stage, "COPY"))
        assert not any(re.search(rf"(^|\s){c}(/|\s|$)", copies) for c in code), f"{stage} copies code: {copies}"
    for stage in ("serve-deps", "train-deps"):
        run = " ".join(stage_args(stage, "RUN"))
        assert "--mount=type=cache,target=/root/.cache/pip" in run
        assert "--constraint /tmp/build/constraints.txt" in run
    # the project itself goes on top, as a wheel, without touching the dependencies
    for stage in ("serve", "train"):
        (install,) = [a for a in stage_args(stage, "RUN") if "/tmp/wheels" in a]
        assert "from=wheel" in install and "--no-deps" in install


def _requirements_module():
    path = REPO / "scripts" / "container-requirements.py"
    spec = importlib.util.spec_from_file_location("container_requirements", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~;\s]", r, maxsplit=1)[0].lower() for r in reqs}


def test_serving_requirements_have_no_pytorch_and_the_cpu_variant_no_cuda():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = _requirements_module().requirements
    gpu, cpu = reqs(pyproject, ["serve", "gpu"]), reqs(pyproject, ["serve"], cpu=True)
    train = reqs(pyproject, ["train", "gpu"])
    for serving in (gpu, cpu):
        assert not _names(serving) & {"torch", "torchvision", "onnxscript", "scikit-learn"}
        assert {"fastapi", "uvicorn", "pydantic-settings"} <= _names(serving)
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]==") for r in gpu)
    assert "onnxruntime-gpu" not in _names(cpu) and "onnxruntime" in _names(cpu)
    ort_gpu = next(r for r in gpu if r.startswith("onnxruntime-gpu=="))
    assert f"onnxruntime=={ort_gpu.split('==')[1]}" in cpu, "the CPU variant runs the same onnxruntime version"
    assert {"torch", "torchvision"} <= _names(train)
    with pytest.raises(SystemExit):
        reqs(pyproject, ["serve", "gpu"], cpu=True)


def test_constraints_pin_what_pyproject_pins():
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and " " not in line, f"not a plain pin: {line!r}"
            pins[name.lower().replace("_", "-")] = version
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    optional = pyproject["project"]["optional-dependencies"]
    for req in [*optional["serve"], *optional["train"], *optional["gpu"]]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", req)
        if m:  # an exact pin in pyproject must be the version the images get
            assert pins.get(m.group(1).lower()) == m.group(2), f"{req} vs constraints {pins.get(m.group(1).lower())}"
    assert pins.get("onnxruntime") == pins.get("onnxruntime-gpu"), "the CPU variant's onnxruntime is pinned too"


# -- compose -------------------------------------------------------------------------------------------------
def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_api_service():
    api = compose_yaml(COMPOSE)["services"]["api"]
    assert api["build"]["target"] == "serve"
    assert api["ports"] == ["127.0.0.1:${ALEXNET_PORT:-8000}:8000"], "published on the loopback interface only"
    assert [v for v in api["volumes"] if v.endswith(":/models:ro")], "the model store is mounted read-only"
    assert any("./model_store" in v for v in api["volumes"])
    env = compose_env(api)
    assert env["ALEXNET_MODEL_STORE"] == "/models" and env["ALEXNET_HOST"] == "0.0.0.0"
    assert env["ALEXNET_PORT"] == "8000", "inside the container the port is fixed; ALEXNET_PORT is the host's"
    for passthrough in ("ALEXNET_WORKERS", "ALEXNET_LOG_LEVEL", "ALEXNET_MODELS", "ALEXNET_VERSION_POLICY",
                        "ALEXNET_PROVIDERS"):
        assert passthrough in env
    assert "alexnet-healthcheck" in api["healthcheck"]["test"]
    assert api["restart"] == "unless-stopped"
    from service.settings import Settings

    grace = api["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > Settings.model_fields["drain_seconds"].default
    (gpu,) = _gpu_devices(api)
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert gpu.get("count") in (1, "all") or gpu.get("device_ids")


def test_compose_train_profile_writes_the_store():
    train = compose_yaml(COMPOSE)["services"]["train"]
    assert train["profiles"] == ["train"]
    assert train["build"]["target"] == "train"
    (store,) = [v for v in train["volumes"] if ":/models" in v]
    assert store.endswith(":/models") and "./model_store" in store, "read-write: it adds versions"
    assert "alexnet-demo --model-store /models" in " ".join(stage_args("train", "CMD")).replace('", "', " ")


def test_compose_cpu_override_removes_every_gpu_reservation():
    base, cpu = compose_yaml(COMPOSE)["services"], compose_yaml(COMPOSE_CPU)["services"]
    for name, service in base.items():
        if _gpu_devices(service):
            assert _gpu_devices(cpu[name]) == ("!reset", []), f"{name} keeps its GPU reservation on CPU hosts"
    assert cpu["api"]["build"]["args"]["VARIANT"] == "cpu"
    assert cpu["api"]["image"] != base["api"]["image"], "the CPU-only image must not overwrite the GPU one"


def test_every_alexnet_variable_is_a_service_setting():
    settings = pytest.importorskip("service.settings")
    fields = {f"ALEXNET_{name.upper()}" for name in settings.Settings.model_fields}
    used = set(re.findall(r"\bALEXNET_[A-Z_]+\b", " ".join(stage_args("serve", "ENV"))))
    used |= {k for s in compose_yaml(COMPOSE)["services"].values() for k in compose_env(s) if k.startswith("ALEXNET_")}
    assert used and used <= fields, f"not settings of the service: {sorted(used - fields)}"


# -- .dockerignore ---------------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (Go filepath.Match plus `**`) as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1:end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


@cache
def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.strip("/")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def excluded(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: the last rule matching it or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in _ignore_rules():
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


@pytest.mark.parametrize("path", [
    ".git/HEAD", ".venv/bin/python", "venv/lib/x.py", "model_store/digits/1/model.onnx", "model_store/README.md",
    "data/digits/train/0/1.png", "runs/demo/last.pt", "checkpoints/epoch_90.pt", "training/checkpoints/a.pt",
    "service/__pycache__/app.cpython-311.pyc", "bench/results/run.json", "alexnet.onnx", "weights.pth",
    "tests/test_store.py", "docs/api.md", ".env", "alexnet_serving.egg-info/PKG-INFO", "service/data/x.JPEG",
    "training/runs/x/metrics.csv", "reports/eval.html",
])
def test_dockerignore_keeps_out(path):
    assert excluded(path)


def test_dockerignore_keeps_what_the_dockerfile_copies():
    sources = []
    for ins, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if ins == "COPY" and "--from=" not in args:
            sources += [s for s in args.split()[:-1] if not s.startswith("--")]
    assert "pyproject.toml" in sources and "service" in sources
    for source in sources:
        files = [source] if (REPO / source).is_file() else [
            str(p.relative_to(REPO)) for p in (REPO / source).rglob("*.py") if "__pycache__" not in p.parts]
        assert files, f"COPY {source}: nothing there"
        for file in files:
            assert not excluded(file), f"the Dockerfile copies {file}, but .dockerignore leaves it out"


def test_dockerignore_keeps_the_package_data():
    """The non-Python files the wheel ships (pyproject's package-data: the page at /) reach the image's build."""
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [str(p.relative_to(REPO)) for package, globs in package_data.items()
             for glob in globs for p in (REPO / package).glob(glob)]
    assert any(f.endswith("index.html") for f in files)
    for file in files:
        assert not excluded(file), f"the wheel ships {file}, but .dockerignore leaves it out of the build"
