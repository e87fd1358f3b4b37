"""The shipped demonstration models know when they are outside their training distribution (issue 26).

Through the real engine and result builders, on DICOM series made from arrays: an abdominal CT phantom
(tests/support/outside.py; no lungs) and a chest radiograph with its contrast inverted and left uncorrected
(training.phantoms; of the independent family's inverted radiographs most, not all, are flagged) are
flagged by the distance to the manifest's ``[reference]``; neither gives a positive finding, the SR's
finding group says "input outside the model's training distribution", and the SRs pass dciodvfy and
PixelMed's DicomSRValidator. Chest inputs of the independent family (training/independent.py, never
trained on) are not flagged. Seeded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomnode.inference.distribution import OUTSIDE, distance
from dicomnode.inference.registry import Registry
from dicomnode.inference.result import ClassificationResult, InferenceResult, SegmentationResult
from dicomnode.pipeline import build_input, build_results
from tests.integration.test_site_models import job_for
from tests.support.outside import abdomen_ct, inverted
from tests.support.peers import REPO, dciodvfy, sr_validator
from tests.support.synthetic import make_ct_series, make_radiograph
from training import independent, phantoms
from training.train_cxr import prepare

SEED = 26_000  # above the independent family's first test seeds that training/train_*.py report


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(REPO / "models", "cpu")


def _radiograph(image: np.ndarray, study: str) -> list[Dataset]:
    pixels = np.rint((image - image.min()) / max(float(np.ptp(image)), 1e-6) * 4000).astype(np.uint16)
    return [make_radiograph(pixels, study_uid=study)]


def _texts(ds: Dataset) -> Iterator[str]:
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            yield str(item.TextValue)
        yield from _texts(item)


def _run(registry: Registry, model_id: str, series: list[Dataset]) -> tuple[InferenceResult, list[Dataset], str]:
    manifest = registry.manifests[model_id]
    image = build_input(manifest, series)
    result = registry.run(model_id, image)
    objects, _, summary = build_results(manifest, image, result, job_for(series, model_id, manifest.version))
    return result, objects, summary


def _valid(sr: Dataset, path: Path) -> None:
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy(path)[0] == []
    assert sr_validator(path)[0] == []


def test_an_abdominal_ct_is_outside_and_finds_no_nodule(registry: Registry, tmp_path: Path) -> None:
    series = make_ct_series(abdomen_ct(SEED), 2.0, study_uid="1.2.826.0.1.3680043.8.498.2601")
    result, objects, summary = _run(registry, "ct-nodule-demo", series)
    assert isinstance(result, SegmentationResult) and result.distribution is not None
    assert result.distribution.outside, result.distribution
    assert result.finding is not None and not result.finding.positive and not result.labels.any()
    (sr,) = objects  # nothing segmented: the SR alone
    assert OUTSIDE in list(_texts(sr))
    assert "(present" not in summary
    _valid(sr, tmp_path / "abdomen-sr.dcm")


def test_an_inverted_radiograph_is_outside_and_not_positive(registry: Registry, tmp_path: Path) -> None:
    drawn = phantoms.radiograph(phantoms.TEST_SEED_BASE + SEED, (128, 128), finding=True)
    series = _radiograph(inverted(drawn.image), "1.2.826.0.1.3680043.8.498.2602")
    result, objects, summary = _run(registry, "cxr-demo", series)
    assert isinstance(result, ClassificationResult) and result.distribution is not None
    assert result.distribution.outside, result.distribution
    assert not any(c.positive for c in result.classes) and not result.explanations
    (sr,) = objects
    assert OUTSIDE in list(_texts(sr))
    assert "POSITIVE" not in str(sr.SeriesDescription) and "(present" not in summary
    _valid(sr, tmp_path / "inverted-sr.dcm")


def test_chest_inputs_of_the_independent_family_are_inside(registry: Registry) -> None:
    """False alarms are rare, not impossible: 2 of 200 independent radiographs when the threshold was set
    (training/README.md); here at most 1 of 10 through the engine, and the chest CT inside."""
    flagged = []
    for k in range(10):
        drawn = independent.radiograph(independent.TEST_SEED_BASE + SEED + k)
        result, _, _ = _run(registry, "cxr-demo", _radiograph(drawn.image, f"1.2.826.0.1.3680043.8.498.2603{k}"))
        assert result.distribution is not None
        flagged.append(result.distribution.outside)
    assert sum(flagged) <= 1, flagged
    chest = independent.ct_chest(independent.TEST_SEED_BASE + SEED, nodules=1)
    result, _, _ = _run(registry, "ct-nodule-demo",
                        make_ct_series(chest.hu, chest.spacing, study_uid="1.2.826.0.1.3680043.8.498.2604"))
    assert result.distribution is not None and not result.distribution.outside, result.distribution


def test_most_inverted_radiographs_of_the_independent_family_are_flagged(registry: Registry) -> None:
    """Not all: 90 % of 150 when the threshold was set (training/README.md); here at least 80 % of 40."""
    reference = registry.manifests["cxr-demo"].reference
    assert reference is not None
    first = independent.TEST_SEED_BASE + SEED
    flagged = [distance(reference, prepare(inverted(independent.radiograph(first + i).image))) > reference.threshold
               for i in range(40)]
    assert sum(flagged) >= 32, sum(flagged)
