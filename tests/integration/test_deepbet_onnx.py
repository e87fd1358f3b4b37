"""deepbet through ONNX Runtime: the exported files are reproducible, their masks agree with TorchScript
(Dice >= 0.99 on the MNI152 series and on its skull-stripped variant), the node serves them without
importing torch, and it falls back to TorchScript when they are missing."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicomnode.inference.deepbet import DeepbetModel
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.volume import build_volume
from tests.support.peers import REPO
from training.common import dice
from training.export_deepbet import export

MIN_DICE = 0.99  # the bar for serving deepbet through ONNX Runtime


def _manifest_copy(folder: Path) -> Manifest:
    (folder / "deepbet").mkdir(parents=True)
    shutil.copy(REPO / "models" / "deepbet" / "manifest.toml", folder / "deepbet" / "manifest.toml")
    return Manifest.read(folder / "deepbet" / "manifest.toml")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """A copy of the deepbet manifest with both ONNX files exported beside it (each digest checked)."""
    manifest = _manifest_copy(tmp_path_factory.mktemp("models"))
    assert [p.name for p in export(manifest, manifest.directory)] == ["bbox_model.onnx", "model.onnx"]
    return manifest


def test_onnx_masks_agree_with_torchscript(exported: Manifest, shared_data: Path) -> None:
    mni = build_volume([dcmread(p) for p in sorted((shared_data / "mr_t1_brain_mni152").iterdir())])
    onnx = DeepbetModel(exported, "cpu")
    torchscript = DeepbetModel(exported, "cpu", runtime="torchscript")
    assert (onnx.runtime, torchscript.runtime) == ("onnxruntime", "torchscript")
    reference = torchscript.predict(mni.array, mni.affine)
    assert dice(onnx.predict(mni.array, mni.affine), reference) >= MIN_DICE
    stripped = np.where(reference, mni.array, 0).astype(mni.array.dtype)  # skull-stripped by deepbet's own mask
    assert dice(onnx.predict(stripped, mni.affine), torchscript.predict(stripped, mni.affine)) >= MIN_DICE


def test_without_its_onnx_files_deepbet_runs_on_torchscript(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicomnode.inference.deepbet")
    model = DeepbetModel(_manifest_copy(tmp_path), "cpu")
    assert model.runtime == "torchscript"
    fallback = "deepbet runs on TorchScript: its ONNX files are not usable"
    (said,) = [r for r in caplog.records if r.getMessage() == fallback]
    context = getattr(said, "ctx", {})
    assert (context["stage"], context["model"]) == ("infer", "deepbet") and ".onnx" in context["reason"]  # which


def test_a_node_serving_deepbet_through_onnx_never_imports_torch(exported: Manifest) -> None:
    script = f"""
import sys
from pathlib import Path
import dicomnode.node, dicomnode.pipeline, dicomnode.worker
from dicomnode.inference.registry import Registry
from dicomnode.cli.models import synthetic_input
registry = Registry(Path({str(exported.directory.parent)!r}), "cpu")
model = registry.get("deepbet")
result = registry.run("deepbet", synthetic_input(registry.manifests["deepbet"]))
print("RUNTIME", model.runtime, "VOXELS", int(result.labels.sum()))
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai", "deepbet")))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RUNTIME onnxruntime VOXELS" in result.stdout
    assert "LOADED []" in result.stdout
