from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicomnode.errors import ModelError
from dicomnode.inference.onnx import CPU, CUDA, choose_providers
from dicomnode.inference.registry import Registry
from tests.support.models import write_threshold_model


def test_providers() -> None:
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    with pytest.raises(ModelError, match="no CUDA provider"):
        choose_providers("cuda", [CPU])


def test_threshold_model_runs_on_the_cpu_here(tmp_path: Path) -> None:
    write_threshold_model(tmp_path, threshold=5.0)
    model = Registry(tmp_path, "auto").get("threshold-test")
    assert model.device == "cpu"  # no GPU on this machine: the fallback is reported, not hidden
    volume = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    labels = model.predict(volume, np.eye(4))
    assert labels.shape == volume.shape
    assert np.array_equal(labels, (volume > 5).astype(np.uint8))


def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    folder = write_threshold_model(tmp_path, threshold=5.0)
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ModelError, match="SHA-256"):
        Registry(tmp_path, "cpu").get("threshold-test")
