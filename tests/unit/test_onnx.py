from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dicomnode.errors import ModelError
from dicomnode.inference.onnx import CPU, CUDA, choose_providers
from dicomnode.inference.registry import Registry, RuntimeOptions
from dicomnode.inference.result import SegmentationResult
from dicomnode.inference.torchscript import select_device
from dicomnode.inference.volume import build_volume
from tests.support.models import write_classifier, write_threshold_model
from tests.support.peers import REPO
from tests.support.synthetic import make_series


def test_providers() -> None:
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    with pytest.raises(ModelError, match="no CUDA provider"):
        choose_providers("cuda", [CPU])


def test_torch_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch sibling of the providers: auto takes a GPU torch sees, cuda without one is refused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == select_device("cpu") == "cpu"
    with pytest.raises(ModelError, match=r"^device 'cuda' was configured, but torch sees no CUDA device$"):
        select_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == select_device("cuda") == "cuda" and select_device("cpu") == "cpu"


def test_threshold_model_runs_on_the_cpu_here(tmp_path: Path) -> None:
    write_threshold_model(tmp_path, threshold=150.0)
    registry = Registry(tmp_path, options=RuntimeOptions(device="auto", threads=1))
    model = registry.get("threshold-test")
    assert model.device == "cpu"  # no GPU on this machine: the fallback is reported, not hidden
    volume = build_volume(make_series(6, 8, 5))
    result = registry.run("threshold-test", volume)
    assert isinstance(result, SegmentationResult)
    assert np.array_equal(result.labels, (volume.array > 150).astype(np.uint8))
    assert registry.get("threshold-test") is model  # warm: loaded once


def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    folder = write_threshold_model(tmp_path, threshold=5.0)
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ModelError, match=r"model threshold-test: file model\.onnx has SHA-256"):
        Registry(tmp_path, "cpu").get("threshold-test")


def test_missing_file_names_the_model(tmp_path: Path) -> None:
    folder = write_threshold_model(tmp_path, threshold=5.0)
    (folder / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"model threshold-test: file model.onnx is missing"):
        Registry(tmp_path, "cpu").get("threshold-test")


@pytest.mark.parametrize(("broken", "message"), [
    ("shape", r"model threshold-test: output shape \(1, 6, 8, 1\) does not fit the input \(1, 6, 8, 5\)"),
    ("nan", "model threshold-test: output contains NaN"),
])
def test_bad_outputs_fail_clearly(tmp_path: Path, broken: str, message: str) -> None:
    write_threshold_model(tmp_path, threshold=5.0, broken=broken)
    registry = Registry(tmp_path, "cpu")
    with pytest.raises(ModelError, match=message):
        registry.run("threshold-test", build_volume(make_series(6, 8, 5)))


def test_bad_manifest_leaves_the_other_models_loading(tmp_path: Path) -> None:
    write_classifier(tmp_path)
    folder = write_threshold_model(tmp_path, threshold=5.0)
    manifest = folder / "manifest.toml"
    manifest.write_text(manifest.read_text().replace("[input]\n", "[input]\nspacinq = [1, 1, 1]\n"))
    registry = Registry(tmp_path, "cpu")
    assert list(registry.manifests) == ["region-classifier"]
    assert registry.errors["threshold-test"].startswith("model threshold-test: manifest ")
    assert registry.errors["threshold-test"].endswith("is invalid: unknown key 'input.spacinq'")
    assert registry.get("region-classifier").device == "cpu"
    with pytest.raises(ModelError, match=r"unknown key 'input\.spacinq'"):
        registry.get("threshold-test")


def test_an_onnx_only_node_never_imports_torch(tmp_path: Path) -> None:
    write_threshold_model(tmp_path, threshold=150.0)
    write_classifier(tmp_path)
    script = f"""
import sys
from pathlib import Path
from dicomnode.inference.registry import Registry
from dicomnode.inference.volume import build_volume
from tests.support.synthetic import make_series
import dicomnode.node, dicomnode.pipeline, dicomnode.worker
registry = Registry(Path({str(tmp_path)!r}), "cpu")
for model in registry.manifests:
    registry.get(model)
registry.run("threshold-test", build_volume(make_series(6, 8, 5)))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai", "deepbet"))
print("LOADED", loaded)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout
