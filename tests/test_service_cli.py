"""Settings (ALEXNET_* environment variables) and `alexnet-serve`'s checks before it starts uvicorn."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import build_parser, check_model, load_settings, main
from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("ALEXNET_"):
            monkeypatch.delenv(key)


def test_defaults():
    s = Settings(_env_file=None)
    assert s.model_store == Path("model_store")
    assert (s.model_name, s.model_version, s.providers) == (None, None, ["auto"])
    assert (s.host, s.port, s.workers, s.log_level) == ("127.0.0.1", 8000, 1, "info")
    assert s.provider_request is None


def test_environment_variables_and_comma_separated_providers(monkeypatch):
    monkeypatch.setenv("ALEXNET_MODEL_STORE", "/srv/models")
    monkeypatch.setenv("ALEXNET_MODEL_NAME", "alexnet")
    monkeypatch.setenv("ALEXNET_MODEL_VERSION", "3")
    monkeypatch.setenv("ALEXNET_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("ALEXNET_PORT", "9000")
    monkeypatch.setenv("ALEXNET_WORKERS", "2")
    monkeypatch.setenv("ALEXNET_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("ALEXNET_MAX_FILE_BYTES", "1234")
    s = Settings()
    assert (s.model_store, s.model_name, s.model_version) == (Path("/srv/models"), "alexnet", 3)
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert (s.port, s.workers, s.log_level, s.max_file_bytes) == (9000, 2, "debug", 1234)
    assert Settings(**{k.removeprefix("ALEXNET_").lower(): v for k, v in s.to_env().items()}) == s


def test_empty_variables_count_as_unset(monkeypatch):
    for name in ("MODEL_NAME", "MODEL_VERSION", "PROVIDERS", "WORKERS", "LOG_LEVEL"):
        monkeypatch.setenv(f"ALEXNET_{name}", "")
    s = Settings()
    assert (s.model_name, s.model_version, s.providers, s.workers, s.log_level) == (None, None, ["auto"], 1, "info")


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


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alexnet-serve: error: ") and "\n" not in err, err
    return err


def test_missing_empty_or_broken_store(exported, tmp_path, capsys):
    root, version, _ = exported
    err = _error(capsys, "--model-store", str(tmp_path / "nope"))
    assert "does not exist" in err and "make demo" in err
    (tmp_path / "empty").mkdir()
    err = _error(capsys, "--model-store", str(tmp_path / "empty"))
    assert f"model store {tmp_path / 'empty'} holds no models — run `make demo` or alexnet-export" in err
    assert "no model named 'other'" in _error(capsys, "--model-store", str(root), "--model-name", "other")
    assert "has no version 99" in _error(capsys, "--model-store", str(root), "--model-version", "99")
    err = _error(capsys, "--model-store", str(root), "--providers", "NoSuchExecutionProvider")
    assert "not in this onnxruntime build" in err
    # a version whose ONNX file changed after export
    broken = tmp_path / "broken"
    shutil.copytree(version.path, broken / "testnet" / "1")
    with open(broken / "testnet" / "1" / "model.onnx", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00" * 16)
    assert "does not match metadata" in _error(capsys, "--model-store", str(broken))
    (broken / "testnet" / "1" / "metadata.json").write_text("{not json")
    assert "not valid JSON" in _error(capsys, "--model-store", str(broken))


def test_check_model_pins_the_newest_version(exported):
    root, version, _ = exported
    assert check_model(Settings(_env_file=None, model_store=root)).path == version.path


def test_real_process_exits_2_with_one_line(tmp_path):
    (tmp_path / "store").mkdir()
    exe = shutil.which("alexnet-serve", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "service.cli"]
    done = subprocess.run([*cmd, "--model-store", str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"alexnet-serve: error: model store {tmp_path / 'store'} holds no models — run `make demo` or alexnet-export"]
