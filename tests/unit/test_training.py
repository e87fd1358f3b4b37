"""training/: the smoke runs are reproducible, and the shipped demonstration models do what metrics.json says.

The smoke runs (a few iterations on tiny data) go in subprocesses, because the scripts switch torch to
deterministic algorithms for the whole process. The shipped models are run with ONNX Runtime on phantoms
from the test seed range, which neither training nor validation used: 200 radiographs, 10 CT volumes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.children import dies_with_us
from training.common import DISCLAIMER, auc, dice
from training.phantoms import TEST_SEED_BASE, VALIDATION_SEED_BASE, ct_chest, radiograph

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


def _smoke(script: str, out: Path, seed: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", f"training.{script}", "--smoke", "--threads", "1",
                             "--seed", str(seed), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **dies_with_us())


def _finish(process: subprocess.Popen[bytes]) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]


@pytest.mark.parametrize("script", ["train_cxr", "train_ct"])
def test_smoke_run_writes_a_model_and_is_deterministic(script: str, tmp_path: Path) -> None:
    runs = [_smoke(script, tmp_path / name, seed) for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    for run in runs:
        _finish(run)
    metrics = {}
    for name in ("a", "b", "c"):
        folder = tmp_path / name
        assert {p.name for p in folder.iterdir()} == {"model.onnx", "manifest.toml", "metrics.json"}
        data = json.loads((folder / "metrics.json").read_text())
        assert data["smoke"] is True
        assert data["onnx_sha256"] == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
        manifest = tomllib.loads((folder / "manifest.toml").read_text())
        assert manifest["files"][0]["sha256"] == data["onnx_sha256"]
        metrics[name] = data
    assert metrics["a"]["onnx_sha256"] == metrics["b"]["onnx_sha256"]  # same seed, same bytes
    assert metrics["a"]["validation"] == metrics["b"]["validation"]
    assert metrics["a"]["onnx_sha256"] != metrics["c"]["onnx_sha256"]  # the seed matters


def test_phantoms_are_deterministic_and_seed_ranges_disjoint() -> None:
    a, b = radiograph(TEST_SEED_BASE + 1), radiograph(TEST_SEED_BASE + 1)
    assert np.array_equal(a.image, b.image) and a.finding == b.finding
    assert not np.array_equal(a.image, radiograph(TEST_SEED_BASE + 2).image)
    c, d = ct_chest(TEST_SEED_BASE + 1, (32, 32, 32)), ct_chest(TEST_SEED_BASE + 1, (32, 32, 32))
    assert np.array_equal(c.hu, d.hu) and np.array_equal(c.nodules, d.nodules)
    assert ct_chest(5, (32, 32, 32), nodules=0).nodules.sum() == 0
    assert ct_chest(5, (48, 48, 48), nodules=2).nodules.sum() > 0
    assert radiograph(7, finding=True).opacity.any() and not radiograph(7, finding=False).opacity.any()
    # training uses seed * 1e6 + i for i < 1e6 and seeds < 10: below the validation range
    assert 10 * 1_000_000 <= VALIDATION_SEED_BASE < TEST_SEED_BASE


def test_metric_helpers() -> None:
    assert auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([True, True, False, False])) == 1.0
    assert auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([True, True, False, False])) == 0.0
    assert dice(np.ones((2, 2)), np.ones((2, 2))) == 1.0
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert dice(np.array([1, 0]), np.array([0, 1])) == 0.0


def _shipped(model_id: str) -> tuple[dict[str, Any], Any]:
    """The shipped manifest, checked (SHA-256, disclaimer, size), and an ONNX Runtime session."""
    import onnxruntime as ort

    folder = MODELS / model_id
    manifest = tomllib.loads((folder / "manifest.toml").read_text())
    assert manifest["manifest_version"] == 2 and manifest["id"] == model_id
    assert DISCLAIMER in " ".join(manifest["intended_use"].split()).lower()
    assert DISCLAIMER in manifest["name"]
    (entry,) = manifest["files"]
    path = folder / entry["name"]
    assert path.stat().st_size < 10 * 1024 * 1024
    assert not list(folder.glob("*.onnx.data"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["onnx_sha256"] == entry["sha256"] and metrics["smoke"] is False
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return manifest, ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _validate_with_the_engine(model_id: str) -> None:
    """When the package has the version-2 manifest (issue 8), the shipped manifest must pass it."""
    try:
        from dicomnode.inference.manifest import MANIFEST_VERSION, Manifest
    except ImportError:
        return
    if MANIFEST_VERSION == 2:
        manifest = Manifest.read(MODELS / model_id / "manifest.toml")
        for file in manifest.files:
            manifest.resolve(file)


def _cxr_scores(draw: Any, seeds: range) -> tuple[np.ndarray, np.ndarray, float]:
    """The shipped classifier's probabilities on ``draw``'s radiographs (128 x 128, prepared as the engine
    prepares them: z-score, then resized to 64 x 64), the truth, and the manifest's threshold."""
    from training.train_cxr import PHANTOM_SHAPE, SIZE, prepare

    manifest, session = _shipped("cxr-demo")
    _validate_with_the_engine("cxr-demo")
    assert manifest["input"]["size"] == list(SIZE) and manifest["output"]["activation"] == "sigmoid"
    phantoms = [draw(s, PHANTOM_SHAPE) for s in seeds]
    x = np.stack([prepare(p.image) for p in phantoms])[:, None]
    logits = session.run(None, {session.get_inputs()[0].name: x})[0][:, 0]
    (spec,) = manifest["output"]["classes"]
    return 1 / (1 + np.exp(-logits.astype(np.float64))), np.array([p.finding for p in phantoms]), spec["threshold"]


def test_shipped_radiograph_classifier_on_fresh_phantoms() -> None:
    # 200 as the acceptance says (40 gave AUC 0.93: too few for a 0.95 bound)
    scores, truth, threshold = _cxr_scores(radiograph, range(TEST_SEED_BASE, TEST_SEED_BASE + 200))
    assert 70 <= truth.sum() <= 130
    assert auc(scores, truth) >= 0.95
    assert ((scores >= threshold) == truth).mean() >= 0.9


# Issue 26's out-of-generator targets are not met yet (training/README.md, "Out of generator"): strict, so
# that the marker must go the day a shipped model meets them.
NOT_YET = pytest.mark.xfail(strict=True, raises=AssertionError,
                            reason="issue 26: the shipped model does not hold on the independent family yet "
                                   "(figures in training/README.md)")


@NOT_YET
def test_shipped_radiograph_classifier_on_the_independent_family() -> None:
    """Issue 26: on radiographs of a generator it never saw (training/independent.py, fresh test seeds),
    AUC >= 0.95 and specificity >= 0.9 at the shipped threshold."""
    from training import independent

    first = independent.TEST_SEED_BASE + 5_000  # beyond the 200 test seeds that train_cxr.py reports
    scores, truth, threshold = _cxr_scores(independent.radiograph, range(first, first + 120))
    assert 30 <= truth.sum() <= 90
    assert auc(scores, truth) >= 0.95
    assert ((scores < threshold) & ~truth).sum() / (~truth).sum() >= 0.9


def _ct_figures(draw: Any = ct_chest, first: int = TEST_SEED_BASE, n: int = 10,
                balanced: bool = False) -> dict[str, Any]:
    """The shipped CT model's figures on ``n`` volumes of ``draw`` from seed ``first`` (training.train_ct.figures:
    mean Dice, nodules found, false components, finding accuracy), with the manifest's rule as the engine
    applies it: the voxel threshold, then connected components of at least ``min_component_mm3``; "nodule
    present" when one is kept (both chosen on validation seeds)."""
    from dicomnode.fl.network import SPACING, normalise
    from training.train_ct import figures

    manifest, session = _shipped("ct-nodule-demo")
    _validate_with_the_engine("ct-nodule-demo")
    assert manifest["input"]["spacing"] == [SPACING] * 3
    (label,) = manifest["output"]["labels"]
    threshold, minimum = label["threshold"], manifest["output"]["min_component_mm3"]
    assert manifest["output"]["finding"]["threshold"] == threshold  # present <=> a kept component
    predicted = []
    for i in range(n):
        phantom = draw(first + i, (64, 64, 64), SPACING, nodules=i % 4 if balanced else None)
        logits = session.run(None, {session.get_inputs()[0].name: normalise(phantom.hu)[None, None]})[0][0, 0]
        predicted.append((1 / (1 + np.exp(-logits.astype(np.float64))), phantom.nodules.astype(bool)))
    out: dict[str, Any] = figures(predicted, threshold, minimum)
    return out


def test_shipped_ct_nodule_segmenter_on_fresh_phantoms() -> None:
    """The bar on fresh seeds of training/phantoms.py: Dice >= 0.8 and finding accuracy >= 0.9."""
    figures = _ct_figures()
    assert 5 <= figures["with_nodules"] < 10  # both kinds of volume are in the sample
    assert figures["dice_mean"] >= 0.8
    assert figures["finding_accuracy"] >= 0.9


@NOT_YET
def test_shipped_ct_nodule_segmenter_on_the_independent_family() -> None:
    """Issue 26: on chest CTs of a generator it never saw (training/independent.py, fresh test seeds; 0-3
    nodules in turn): Dice >= 0.7, every nodule found, no false component on >= 90 % of clean studies."""
    from training import independent

    figures = _ct_figures(independent.ct_chest, independent.TEST_SEED_BASE + 5_000, 12, balanced=True)
    assert figures["clean"] == 3 and figures["nodules"] >= 15
    assert figures["dice_mean"] >= 0.7
    assert figures["nodules_found"] == figures["nodules"]
    assert figures["clean_without_component_fraction"] >= 0.9
