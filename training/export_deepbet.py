"""Derive deepbet's two ONNX files from the TorchScript weights in its wheel, checked against the manifest.

    .venv/bin/python training/export_deepbet.py [--models-dir models]

Writes ``bbox_model.onnx`` and ``model.onnx`` beside ``<models-dir>/deepbet/manifest.toml`` (8.5 MB
each, so not committed; scripts/setup.sh runs this). The legacy TorchScript exporter of torch 2.13.0 at
opset 17 writes the same bytes on every run, so each file must match the SHA-256 in the manifest; a
file that does not is removed and the script fails (the node then runs the TorchScript files).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dicomnode.errors import ModelError  # noqa: E402
from dicomnode.inference.manifest import Manifest  # noqa: E402

SIZES = {"bbox_model": 128, "model": 256}  # the fixed cube each network takes (dicomnode/inference/deepbet.py)
OPSET = 17


def export(manifest: Manifest, out_dir: Path) -> list[Path]:
    """Export both networks into ``out_dir``; raises :class:`ModelError` when a digest differs."""
    written = []
    for stem, size in SIZES.items():
        target = out_dir / f"{stem}.onnx"
        partial = out_dir / f".{stem}.onnx.partial"
        with warnings.catch_warnings():  # TorchScript's and the legacy exporter's deprecation notices
            warnings.simplefilter("ignore")
            path = manifest.resolve(manifest.file(f"{stem}.pt"))
            network = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
            torch.onnx.export(network, (torch.zeros(1, 1, size, size, size),), str(partial), dynamo=False,
                              opset_version=OPSET, input_names=["image"], output_names=["probabilities"])
        digest = hashlib.sha256(partial.read_bytes()).hexdigest()
        expected = manifest.file(target.name).sha256
        if digest != expected:
            partial.unlink()
            raise ModelError(f"model {manifest.id}: exported {target.name} has SHA-256 {digest}, the manifest "
                             f"says {expected} (torch {torch.__version__}; 2.13.0 is pinned)")
        os.replace(partial, target)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    args = parser.parse_args()
    manifest = Manifest.read(args.models_dir / "deepbet" / "manifest.toml")
    try:
        paths = export(manifest, manifest.directory)
    except ModelError as exc:
        sys.exit(str(exc))
    for path in paths:
        print(f"{path}: SHA-256 matches the manifest")


if __name__ == "__main__":
    main()
