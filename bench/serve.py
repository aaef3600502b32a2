"""`make serve`: which model is served, said on the first line printed, then `alexnet-serve`.

    python -m bench.serve [--model-store DIR] [--host H] [--port P] [--print-command]

- torchvision's AlexNet weights in the torch hub cache (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``,
  the file torchvision's ``AlexNet_Weights.IMAGENET1K_V1`` downloads; TORCH_HOME defaults to
  ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``, as torch.hub has it): imported with ``alexnet-import
  --torchvision alexnet`` as the model ``torchvision-alexnet`` (once: a version imported from a file with the same
  sha256 is served again) and served alone, with the 1,000 ImageNet classes.
- otherwise: the digits demo, as before (``alexnet-demo --if-empty``, then every model in the store).

A file there that the import refuses stops ``make serve`` with exit status 2: one whose sha256 does not begin
7be5be79, as its name says (damaged, truncated, or not torchvision's), on the first line printed, before anything is
loaded; any other refusal with the importer's error. It does not fall back to the demo:
whoever put weights there asked for ImageNet, and a demo answering in its place would hide the problem.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from alexnet_store import ModelStore, StoreError
from alexnet_store.store import sha256_of

IMPORTED_NAME = "torchvision-alexnet"


def torch_home() -> Path:
    """torch.hub's cache root, without importing torch: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "torch"


def hub_alexnet_weights() -> tuple[Path, str]:
    """Where torchvision keeps its AlexNet weights once downloaded, and the weights enum they belong to."""
    from torchvision.models import AlexNet_Weights

    weights = AlexNet_Weights.IMAGENET1K_V1
    return torch_home() / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1], str(weights)


def already_imported(store: ModelStore, sha256: str) -> int | None:
    """The newest version of `IMPORTED_NAME` imported from a file with this sha256, if any."""
    try:
        versions = store.versions(IMPORTED_NAME)
    except StoreError:
        return None
    for number in reversed(versions):
        try:
            imported = store.resolve(IMPORTED_NAME, number).metadata.imported
        except StoreError:
            continue
        if imported is not None and imported.sha256 == sha256:
            return number
    return None


def serve_command(store: Path, host: str, port: int, models: str | None) -> list[str]:
    exe = shutil.which("alexnet-serve", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "service.cli"]
    command += ["--model-store", str(store), "--host", host, "--port", str(port)]
    return command + (["--models", models] if models else [])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-store", type=Path, default=Path("model_store"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--print-command", action="store_true",
                   help="prepare the model, then print the alexnet-serve command instead of running it")
    args = p.parse_args(argv)
    weights_file, weights = hub_alexnet_weights()
    store = ModelStore(args.model_store)
    if weights_file.is_file():
        from bench import importer

        facts = importer.FileFacts(weights_file, sha256_of(weights_file), weights_file.stat().st_size)
        try:  # before anything else is said: the first line says what will be served, or why nothing is
            importer.check_hub_hash(facts)
        except importer.ModelImportError as exc:
            print(f"make serve: error: refusing torchvision's AlexNet weights at {weights_file}: {exc}; move the "
                  "file away to serve the digits demo instead", flush=True)
            return 2
        print(f"make serve: serving torchvision's AlexNet ({weights}, the 1,000 ImageNet classes) from {weights_file} "
              f"as the model {IMPORTED_NAME}", flush=True)
        version = already_imported(store, facts.sha256)
        if version is not None:
            print(f"make serve: {IMPORTED_NAME} v{version} was imported from this file already", flush=True)
        else:
            status = importer.main(["--torchvision", "alexnet", str(weights_file), "--name", IMPORTED_NAME,
                                    "--model-store", str(args.model_store)])
            if status != 0:
                print(f"make serve: the weights in {weights_file} were refused (above); move the file away to serve "
                      "the digits demo instead", file=sys.stderr)
                return status
        models = IMPORTED_NAME
    else:
        print(f"make serve: serving the digits demo (no torchvision AlexNet weights at {weights_file}; put "
              f"{weights_file.name} there to serve ImageNet's 1,000 classes)", flush=True)
        from training import demo

        status = demo.main(["--model-store", str(args.model_store), "--if-empty"])
        if status != 0:
            return status
        models = None
    command = serve_command(args.model_store, args.host, args.port, models)
    if args.print_command:
        print(" ".join(command))
        return 0
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
