"""The promotion gate and promotion of a federated candidate to the model's next version."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from dicomnode.errors import ModelError
from dicomnode.fl.candidate import bump, candidates, passes_gate, promote, read_candidate
from dicomnode.inference.registry import Registry
from tests.support.models import write_threshold_model


def rounds(*pairs: tuple[float, float]) -> list[dict[str, object]]:
    sites = {f"site-{i}": {"dice_candidate": c, "dice_current": k, "cases": 2} for i, (c, k) in enumerate(pairs)}
    return [{"round": 1, "sites": {}}, {"round": 2, "sites": sites}]


def test_gate_asks_for_at_least_the_current_dice_at_every_site() -> None:
    assert passes_gate(rounds((0.8, 0.7), (0.5, 0.5), (0.9, 0.1)), sites=3)
    assert not passes_gate(rounds((0.8, 0.7), (0.49, 0.5), (0.9, 0.1)), sites=3)
    assert not passes_gate(rounds((0.8, 0.7), (0.5, 0.5)), sites=3)  # a site missing
    assert not passes_gate([], sites=1)


def test_bump() -> None:
    assert [bump("1.0.0"), bump("2.1"), bump("1.9.3")] == ["1.1.0", "2.2", "1.10.0"]
    with pytest.raises(ModelError, match="not numeric"):
        bump("v1")


def candidate_folder(models: Path, passed: bool) -> Path:
    """A candidate of ``threshold-test`` whose ONNX file is another threshold model's."""
    other = write_threshold_model(models.parent / "other", 55.0) / "model.onnx"
    folder = models / "threshold-test" / "candidates" / "fl-1.0-r2-test"
    folder.mkdir(parents=True)
    shutil.copy(other, folder / "model.onnx")
    (folder / "candidate.json").write_text(json.dumps({
        "model": "threshold-test", "base_version": "1.0", "passes_gate": passed, "rounds": rounds((0.6, 0.5)),
        "onnx_sha256": hashlib.sha256(other.read_bytes()).hexdigest()}))
    return folder


def test_a_candidate_that_passed_becomes_the_next_version_with_its_sha(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_threshold_model(models, 40.0)
    folder = candidate_folder(models, passed=True)
    assert [c.name for c in candidates(models)] == ["fl-1.0-r2-test"]
    assert promote(read_candidate(folder)) == "1.1"
    registry = Registry(models)
    assert registry.errors == {} and registry.manifests["threshold-test"].version == "1.1"
    registry.get("threshold-test")  # loads: the manifest's SHA-256 is the new file's
    assert (models / "threshold-test" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    with pytest.raises(ModelError, match=r"trained against version 1\.0, the model is now 1\.1"):
        promote(read_candidate(folder))


def test_a_candidate_that_failed_the_gate_stays_a_candidate(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_threshold_model(models, 40.0)
    before = (models / "threshold-test" / "manifest.toml").read_text()
    with pytest.raises(ModelError, match="did not pass the gate"):
        promote(read_candidate(candidate_folder(models, passed=False)))
    assert (models / "threshold-test" / "manifest.toml").read_text() == before
