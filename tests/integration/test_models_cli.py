"""``dicomnode models list|verify|run`` as a real process: one-sentence errors, exit codes, no tracebacks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from pydicom import dcmread

from tests.support.cli import run_cli
from tests.support.models import write_classifier, write_threshold_model
from tests.support.peers import dciodvfy
from tests.support.synthetic import make_radiograph, make_series, write_series


def dicomnode(tmp_path: Path, *args: str, device: str = "cpu") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env |= {"DICOMNODE_MODELS_DIR": str(tmp_path / "models"), "DICOMNODE_DATA_DIR": str(tmp_path / "data"),
            "DICOMNODE_DEVICE": device}
    return run_cli(["models", *args], env)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    write_classifier(tmp_path / "models")
    write_threshold_model(tmp_path / "models", 40.0)
    return tmp_path / "models"


def test_list_and_verify(tmp_path: Path, models: Path) -> None:
    listed = dicomnode(tmp_path, "list", "--load")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["id", "version", "task", "backend", "device", "warm"]
    assert lines[1].split() == ["region-classifier", "2.1", "classification", "onnx", "cpu", "yes"]
    assert lines[2].split() == ["threshold-test", "1.0", "segmentation", "onnx", "cpu", "yes"]
    verified = dicomnode(tmp_path, "verify")
    assert verified.returncode == 0, verified.stderr
    assert "region-classifier: checksums ok, loaded on cpu, synthetic run ok (Opacity " in verified.stdout
    assert "threshold-test: checksums ok, loaded on cpu, synthetic run ok (" in verified.stdout


def test_verify_runs_a_tiled_model_on_an_input_at_least_one_window_large(tmp_path: Path) -> None:
    """A model with a sliding window whose roi is larger than the default synthetic volume (32 x 64 x 64) in
    two axes is verified on a volume that holds a whole window, and says what it found."""
    write_threshold_model(tmp_path / "models", 40.0, input_extra="[input.tiling]\nroi = [40, 24, 80]\noverlap = 0.5")
    verified = dicomnode(tmp_path, "verify", "threshold-test")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("threshold-test: checksums ok, loaded on cpu, synthetic run ok (")


def test_list_and_verify_load_on_the_configured_device(tmp_path: Path, models: Path) -> None:
    """`device = "cuda"` where there is none: each model is unavailable and says why (the node does not
    quietly run on the CPU what a site configured for its GPU); `auto` falls back to the CPU."""
    if onnxruntime.get_device() == "GPU" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has a CUDA onnxruntime: the refusal is for one that has none")
    listed = dicomnode(tmp_path, "list", "--load", device="cuda")
    assert listed.returncode == 1
    assert sum("UNAVAILABLE (its rules are suspended): device 'cuda' was configured, but this onnxruntime has no "
               "CUDA provider" in line for line in listed.stdout.splitlines()) == 2
    verified = dicomnode(tmp_path, "verify", "threshold-test", device="cuda")
    assert verified.returncode == 1 and "device 'cuda' was configured" in verified.stdout + verified.stderr
    auto = dicomnode(tmp_path, "list", "--load", device="auto")
    assert auto.returncode == 0 and [line.split()[4] for line in auto.stdout.splitlines()[1:]] == ["cpu", "cpu"]


@pytest.mark.parametrize(("damage", "message"), [
    ("sha", "threshold-test: FAILED: model threshold-test: file model.onnx has SHA-256"),
    ("missing", "threshold-test: FAILED: model threshold-test: file model.onnx is missing"),
    ("key", "threshold-test: FAILED: model threshold-test: manifest "),
])
def test_verify_names_the_bad_model_in_one_line(tmp_path: Path, models: Path, damage: str, message: str) -> None:
    onnx_file, manifest = models / "threshold-test" / "model.onnx", models / "threshold-test" / "manifest.toml"
    if damage == "sha":
        onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    elif damage == "missing":
        onnx_file.unlink()
    else:
        manifest.write_text("colour = 1\n" + manifest.read_text())
    result = dicomnode(tmp_path, "verify")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if "FAILED" in ln]  # log lines go to stderr too
    assert line.startswith(message)
    assert "region-classifier: checksums ok" in result.stdout  # the other model is fine


def test_run_writes_what_the_node_would_send(tmp_path: Path, models: Path) -> None:
    pixels = np.full((128, 128), 1000, dtype=np.uint16)
    pixels[48:80, 48:80] = 3000
    pixels[0, 0], pixels[-1, -1] = 0, 4095
    (tmp_path / "dx").mkdir()
    make_radiograph(pixels).save_as(tmp_path / "dx" / "image.dcm", enforce_file_format=True)
    result = dicomnode(tmp_path, "run", "region-classifier", str(tmp_path / "dx"), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "series 3: Opacity 0.865 (present) (2 object(s) written)" in result.stdout  # sigmoid(8 * (3000/4095 - .5))
    written = sorted(p.name.split("-")[0] for p in (tmp_path / "out").iterdir())
    assert written == ["seg", "sr"]
    for path in (tmp_path / "out").iterdir():
        assert dciodvfy(path)[0] == []
    write_series(make_series(8, 16, 16), tmp_path / "mr")
    result = dicomnode(tmp_path, "run", "threshold-test", str(tmp_path / "mr"), "--output", str(tmp_path / "out3d"))
    assert result.returncode == 0, result.stderr
    assert "Bright: " in result.stdout and " ml" in result.stdout
    seg = next(p for p in (tmp_path / "out3d").iterdir() if p.name.startswith("seg"))
    assert dcmread(seg).SegmentationType == "BINARY"


@pytest.mark.parametrize(("args", "message"), [
    (("run", "no-such-model", "."), "dicomnode: no model 'no-such-model' under the models directory"),
    (("run", "region-classifier", "/nonexistent/folder"), "dicomnode: no DICOM images found in /nonexistent/folder"),
    (("run", "region-classifier", "MR"), "dicomnode: model region-classifier takes DX, CR, not MR"),
])
def test_run_errors_are_one_sentence(tmp_path: Path, models: Path, args: tuple[str, ...], message: str) -> None:
    write_series(make_series(4, 8, 8), tmp_path / "MR")
    args = tuple(str(tmp_path / "MR") if a == "MR" else a for a in args)
    result = dicomnode(tmp_path, *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.stderr


def test_list_shows_a_folder_whose_manifest_does_not_read_with_its_error(tmp_path: Path, models: Path) -> None:
    """A model folder whose manifest is not valid is listed under its folder's name, with dashes for what
    could not be read and the manifest's error, beside the models that read; the command fails (exit 1)."""
    manifest = models / "threshold-test" / "manifest.toml"
    manifest.write_text("colour = 1\n" + manifest.read_text())
    listed = dicomnode(tmp_path, "list")
    lines = listed.stdout.splitlines()
    assert lines[1].split() == ["region-classifier", "2.1", "classification", "onnx", "-", "no"]
    broken = next(line for line in lines if line.startswith("threshold-test"))
    assert broken.split()[:6] == ["threshold-test", "-", "-", "-", "-", "no"], broken
    assert "  ERROR: " in broken and "colour" in broken
    assert listed.returncode == 1, listed.stderr
