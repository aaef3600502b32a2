"""Settings (ALEXNET_* environment variables) and `alexnet-serve`'s checks before it starts uvicorn."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_settings import SettingsError
from support.server import start_server, stop_server

from service.cli import build_parser, check_store, load_settings, main
from service.settings import Settings
from service.version_policy import VersionPolicy


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("ALEXNET_"):
            monkeypatch.delenv(key)


def test_defaults():
    s = Settings(_env_file=None)
    assert s.model_store == Path("model_store")
    assert (s.models, s.version_policy, s.repository_poll_seconds, s.providers) == ([], "latest:1", 15.0, ["auto"])
    assert (s.host, s.port, s.workers, s.log_level) == ("127.0.0.1", 8000, 1, "info")
    assert s.provider_request is None


def test_environment_variables_and_comma_separated_providers(monkeypatch):
    monkeypatch.setenv("ALEXNET_MODEL_STORE", "/srv/models")
    monkeypatch.setenv("ALEXNET_MODELS", "alexnet, digits")
    monkeypatch.setenv("ALEXNET_VERSION_POLICY", "latest:2; digits=specific:1,3")
    monkeypatch.setenv("ALEXNET_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("ALEXNET_PORT", "9000")
    monkeypatch.setenv("ALEXNET_WORKERS", "2")
    monkeypatch.setenv("ALEXNET_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("ALEXNET_MAX_FILE_BYTES", "1234")
    s = Settings()
    assert (s.model_store, s.models) == (Path("/srv/models"), ["alexnet", "digits"])
    assert (str(s.policies.for_model("alexnet")), str(s.policies.for_model("digits"))) == ("latest:2", "specific:1,3")
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert (s.port, s.workers, s.log_level, s.max_file_bytes) == (9000, 2, "debug", 1234)
    assert Settings(**{k.removeprefix("ALEXNET_").lower(): v for k, v in s.to_env().items()}) == s


def test_empty_variables_count_as_unset(monkeypatch):
    for name in ("MODELS", "VERSION_POLICY", "PROVIDERS", "WORKERS", "LOG_LEVEL"):
        monkeypatch.setenv(f"ALEXNET_{name}", "")
    s = Settings()
    assert (s.models, s.version_policy, s.providers, s.workers, s.log_level) == ([], "latest:1", ["auto"], 1, "info")


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("ALEXNET_PORT", "9000")
    monkeypatch.setenv("ALEXNET_HOST", "0.0.0.0")
    monkeypatch.setenv("ALEXNET_PROVIDERS", "CPUExecutionProvider")
    s = load_settings(build_parser().parse_args(["--port", "9100", "--model-store", "/x", "--workers", "3"]))
    assert (s.port, s.host, s.model_store, s.workers) == (9100, "0.0.0.0", Path("/x"), 3)
    assert s.providers == ["CPUExecutionProvider"]
    s = load_settings(build_parser().parse_args(["--providers", "CUDAExecutionProvider,CPUExecutionProvider"]))
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_invalid_settings_are_one_line_errors(monkeypatch, capsys):
    monkeypatch.setenv("ALEXNET_PORT", "eighty")
    assert main(["--model-store", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alexnet-serve: error: invalid settings: port:") and "\n" not in err
    monkeypatch.delenv("ALEXNET_PORT")
    assert main(["--providers", "auto,CPUExecutionProvider"]) == 2
    assert "'auto' cannot be combined" in capsys.readouterr().err
    assert main(["--version-policy", "newest"]) == 2
    assert "invalid version policy 'newest': use 'latest', 'latest:N', 'all' or 'specific:V1,V2,...'" in \
        capsys.readouterr().err
    assert main(["--models", "ok,../etc"]) == 2
    assert "invalid model name '../etc'" in capsys.readouterr().err


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alexnet-serve: error: ") and "\n" not in err, err
    return err


def test_missing_empty_or_unknown_models(exported, tmp_path, capsys):
    root, _, _ = exported
    err = _error(capsys, "--model-store", str(tmp_path / "nope"))
    assert "does not exist" in err and "make demo" in err
    (tmp_path / "empty").mkdir()
    err = _error(capsys, "--model-store", str(tmp_path / "empty"))
    assert f"model store {tmp_path / 'empty'} holds no models — run `make demo` or alexnet-export" in err
    err = _error(capsys, "--model-store", str(root), "--models", "testnet,other")
    assert "has no model named 'other' (models there: testnet)" in err
    err = _error(capsys, "--model-store", str(root), "--providers", "NoSuchExecutionProvider")
    assert "not in this onnxruntime build" in err
    err = _error(capsys, "--model-store", str(root), "--api-keys-file", str(tmp_path / "no-keys"))
    assert "cannot read the API keys file" in err
    (tmp_path / "keys").write_text("secret-value superuser\n")
    err = _error(capsys, "--model-store", str(root), "--api-keys-file", str(tmp_path / "keys"))
    assert "line 1: unknown scope 'superuser'" in err and "secret-value" not in err


def test_check_store_names_the_models(exported):
    root, _, _ = exported
    assert check_store(Settings(_env_file=None, model_store=root)) == ["testnet"]
    assert check_store(Settings(_env_file=None, model_store=root, models=["testnet"])) == ["testnet"]


def test_help_is_derived_from_the_settings():
    text = build_parser().format_help()
    description = Settings.model_fields["repository_poll_seconds"].description
    assert " ".join(description.split()[:6]) in " ".join(text.split())
    assert "env ALEXNET_VERSION_POLICY; default latest:1" in " ".join(text.split())


def test_a_model_with_no_loadable_version_exits_3(exported, tmp_path):
    """The CLI's checks pass, the worker's repository finds the sha256 mismatch, reports it and exits (status 3)."""
    _, version, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(version.path, broken / "testnet" / "1")
    with open(broken / "testnet" / "1" / "model.onnx", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00" * 16)
    exe = shutil.which("alexnet-serve", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "service.cli"]
    done = subprocess.run([*cmd, "--model-store", str(broken), "--port", "0", "--providers", "CPUExecutionProvider"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "model testnet version 1 failed to load" in done.stderr and "does not match metadata" in done.stderr
    assert "Traceback" not in done.stderr


def test_real_process_exits_2_with_one_line(tmp_path):
    (tmp_path / "store").mkdir()
    exe = shutil.which("alexnet-serve", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "service.cli"]
    done = subprocess.run([*cmd, "--model-store", str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"alexnet-serve: error: model store {tmp_path / 'store'} holds no models — run `make demo` or alexnet-export"]


# -- the deprecated aliases of the versions before the model repository (issue 21) --------------------------------
def _flags(*argv: str) -> Settings:
    with pytest.deprecated_call():
        return load_settings(build_parser().parse_args(list(argv)))


def _warnings(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_deprecated_flags_are_models_and_a_specific_version(capsys):
    s = _flags("--model-name", "testnet", "--model-version", "1")
    assert (s.models, s.version_policy) == (["testnet"], "testnet=specific:1")
    assert s.policies.for_model("testnet") == VersionPolicy("specific", versions=(1,))
    assert _warnings(capsys) == [
        "alexnet-serve: warning: --model-name is deprecated; use --models testnet",
        "alexnet-serve: warning: --model-version is deprecated; use --version-policy testnet=specific:1"]
    s = _flags("--model-version", "2")  # no one model named: the default policy
    assert (s.models, s.version_policy) == ([], "specific:2")
    s = _flags("--models", "testnet", "--model-version", "2")
    assert (s.models, s.version_policy) == (["testnet"], "testnet=specific:2")
    # with the flag it aliases, an alias that agrees is only a warning; the new flag's value is kept
    s = _flags("--models", "testnet", "--model-name", "testnet",
               "--version-policy", "specific:3", "--model-version", "3")
    assert (s.models, s.version_policy) == (["testnet"], "specific:3")
    capsys.readouterr()
    assert main(["--model-name", "testnet", "--models", "testnet,other"]) == 2  # conflicts: one line, exit 2
    assert _warnings(capsys) == ["alexnet-serve: error: invalid settings: --model-name testnet conflicts with "
                                 "--models testnet,other: --model-name is deprecated, give only --models"]
    err = _error(capsys, "--model-name", "testnet", "--model-version", "2", "--version-policy", "latest:1")
    assert "--model-version 2 conflicts with --version-policy latest:1: --model-version is deprecated" in err
    assert "a version number (1, 2, ...) is needed, not '0'" in _error(capsys, "--model-version", "0")
    assert "--model-name" in build_parser().format_help() and "deprecated" in build_parser().format_help()


def test_deprecated_flags_reach_the_store_check(exported, capsys):
    root, _, _ = exported
    with pytest.deprecated_call():
        assert main(["--model-store", str(root), "--model-name", "other"]) == 2
    assert _warnings(capsys) == ["alexnet-serve: warning: --model-name is deprecated; use --models other",
                                 f"alexnet-serve: error: model store {root} has no model named 'other' (models "
                                 "there: testnet)"]
    with pytest.deprecated_call():
        s = load_settings(build_parser().parse_args(["--model-store", str(root), "--model-name", "testnet"]))
    assert check_store(s) == ["testnet"]


def test_deprecated_environment_variables(monkeypatch, capsys):
    monkeypatch.setenv("ALEXNET_MODEL_NAME", "testnet")
    monkeypatch.setenv("ALEXNET_MODEL_VERSION", "1")
    with pytest.deprecated_call():
        s = Settings()
    assert (s.models, s.version_policy) == (["testnet"], "testnet=specific:1")
    assert _warnings(capsys) == [
        "alexnet-serve: warning: ALEXNET_MODEL_NAME is deprecated; use ALEXNET_MODELS=testnet",
        "alexnet-serve: warning: ALEXNET_MODEL_VERSION is deprecated; use ALEXNET_VERSION_POLICY='testnet=specific:1'"]
    with pytest.deprecated_call():
        s = load_settings(build_parser().parse_args(["--models", "other", "--version-policy", "all"]))
    assert (s.models, s.version_policy) == (["other"], "all")  # flags override the environment, aliases included
    monkeypatch.setenv("ALEXNET_VERSION_POLICY", "testnet=specific:1; latest:2")  # agrees: kept
    with pytest.deprecated_call():
        assert Settings().version_policy == "testnet=specific:1; latest:2"
    monkeypatch.setenv("ALEXNET_VERSION_POLICY", "all")
    with pytest.raises(SettingsError, match="ALEXNET_MODEL_VERSION=1 conflicts with ALEXNET_VERSION_POLICY=all"):
        Settings()
    monkeypatch.delenv("ALEXNET_VERSION_POLICY")
    monkeypatch.setenv("ALEXNET_MODELS", "digits")
    capsys.readouterr()
    err = _error(capsys, "--port", "0")
    assert err == ("alexnet-serve: error: invalid settings: ALEXNET_MODEL_NAME=testnet conflicts with "
                   "ALEXNET_MODELS=digits: ALEXNET_MODEL_NAME is deprecated, give only ALEXNET_MODELS")
    monkeypatch.delenv("ALEXNET_MODELS")
    monkeypatch.setenv("ALEXNET_MODEL_NAME", "")  # empty = unset, as for every variable
    monkeypatch.setenv("ALEXNET_MODEL_VERSION", "newest")
    assert "ALEXNET_MODEL_VERSION: a version number (1, 2, ...) is needed, not 'newest'" in _error(capsys)


def test_a_server_starts_with_the_deprecated_flags(exported, tmp_path):
    """The old command line (and variable) still serves: testnet v1, each warning once (not again per worker)."""
    root, _, _ = exported
    server = start_server(root, tmp_path / "serve.log", "--model-name", "testnet", "--model-version", "1",
                          "--providers", "CPUExecutionProvider", "--repository-poll-seconds", "0",
                          env={"ALEXNET_WARMUP_BATCH": "1", "ALEXNET_MODEL_NAME": "testnet"})
    try:
        with server.client() as c:
            models = c.get("/v1/models").json()["models"]
            config = c.get("/v2/models/testnet/config").json()
    finally:
        assert stop_server(server) in (0, -15)
    assert [(m["name"], m["version"], m["ready"]) for m in models] == [("testnet", 1, True)]
    assert config["version_policy"] == {"specific": {"versions": [1]}}
    log = server.log.read_text().splitlines()
    for line in ("alexnet-serve: warning: --model-name is deprecated; use --models testnet",
                 "alexnet-serve: warning: --model-version is deprecated; use --version-policy testnet=specific:1",
                 "alexnet-serve: warning: ALEXNET_MODEL_NAME is deprecated; use ALEXNET_MODELS=testnet"):
        assert log.count(line) == 1, server.log.read_text()
    assert "versions: testnet=specific:1" in server.log.read_text()
