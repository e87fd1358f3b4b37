"""A "finding" from a segmentation, for any segmenter that declares ``[output.finding]`` in its manifest.

The manifest is the README's worked example (lung nodules), so that the documented keys are the tested
ones; the engine's component rule and the SR's finding and per-component groups are checked on arrays
with known answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.postprocess import components, segment_finding
from dicomnode.inference.volume import build_volume
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from tests.support.synthetic import make_series
from tests.unit.test_manifest import readme_examples, write


def _nodule_example() -> str:
    return next(t for t in readme_examples() if "[output.finding]" in t)


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    return Manifest.read(write(tmp_path / "lung-nodules", _nodule_example()))


def _two_blobs() -> tuple[np.ndarray, np.ndarray]:
    """A 3x3x3 cube (probability up to 0.8) and a single voxel (probability 0.99) on a 10^3 grid."""
    probability = np.zeros((1, 10, 10, 10))
    probability[0, 2:5, 2:5, 2:5] = 0.6
    probability[0, 3, 3, 3] = 0.8
    probability[0, 8, 8, 8] = 0.99
    return (probability[0] > 0.5).astype(np.uint8), probability


def test_components_under_the_minimum_volume_are_dropped_and_the_rest_measured(manifest: Manifest) -> None:
    labels, probability = _two_blobs()
    kept, parts = components(labels, probability, manifest, voxel_mm3=8.0)  # cube 216 mm3, voxel 8 mm3 < 100
    assert manifest.output.min_component_mm3 == 100.0
    (cube,) = parts
    assert (cube.label, cube.voxels, cube.volume_mm3, cube.max_probability) == (1, 27, 216.0, 0.8)
    assert cube.slices == (2, 3, 4) and cube.centroid == (3.0, 3.0, 3.0)
    assert kept[8, 8, 8] == 0 and int(kept.sum()) == 27 and labels[8, 8, 8] == 1  # the input is untouched


def test_the_finding_is_the_highest_probability_inside_kept_components(manifest: Manifest) -> None:
    labels, probability = _two_blobs()
    spec = manifest.output.finding
    assert spec is not None
    _, parts = components(labels, probability, manifest, voxel_mm3=8.0)
    finding = segment_finding(parts, spec)
    assert finding.probability == 0.8 and finding.positive  # not the 0.99 of the dropped voxel
    _, small = components(labels, probability, manifest, voxel_mm3=1.0)  # the cube is now 27 mm3: dropped too
    assert small == () and segment_finding(small, spec).probability == 0.0
    assert not segment_finding(small, spec).positive


def test_a_2d_image_keeps_every_component(manifest: Manifest) -> None:
    labels, probability = _two_blobs()
    kept, parts = components(labels[:1], probability[:, :1], manifest, voxel_mm3=0.0)
    assert np.array_equal(kept, labels[:1]) and all(p.volume_mm3 == 0.0 for p in parts)


def test_a_classifier_cannot_declare_a_segmentation_finding(tmp_path: Path) -> None:
    classifier = next(t for t in readme_examples() if 'task = "classification"' in t)
    finding = "[output.finding]\nlabel = 1\nname = 'x'\ncode = { scheme = 'SCT', value = '1', meaning = 'x' }\n"
    with pytest.raises(ModelError, match=r"output\.finding applies to segmentation only"):
        Manifest.read(write(tmp_path / "cxr", classifier.replace("[output.explanation]", finding
                                                                 + "[output.explanation]")))


def _report(manifest: Manifest, mask: np.ndarray) -> tuple[Dataset, list[Dataset]]:
    """The SR (and the objects it references) for ``mask`` as a model's probability map on a CT-like series."""
    series = make_series(n_slices=10, rows=10, columns=10, spacing=(2.0, 2.0), slice_step=2.0)  # 8 mm3 voxels
    volume = build_volume(series)
    probability = mask[None] * 0.9
    labels, parts = components(mask.astype(np.uint8), probability, manifest, volume.voxel_volume_mm3)
    spec = manifest.output.finding
    assert spec is not None
    sources = sanitise_headers(volume.datasets)
    identity = ResultIdentity.for_job(str(series[0].SeriesInstanceUID), 7, manifest)
    seg = build_seg(sources, labels, manifest, identity) if labels.any() else None
    sr = build_sr(seg, sources, segment_volumes_ml(labels, volume.voxel_volume_mm3, manifest), manifest, identity,
                  parts, segment_finding(parts, spec))
    return sr, [seg] if seg is not None else []


def _groups(sr: Dataset) -> list[Dataset]:
    (measurements,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return list(measurements.ContentSequence)


def _items(group: Dataset, code: str) -> list[Dataset]:
    return [i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == code]


def test_the_sr_carries_the_finding_and_each_nodule_volume(manifest: Manifest) -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[1:5, 1:5, 1:5] = True  # 64 voxels
    mask[6:9, 6:9, 6:9] = True  # 27 voxels
    sr, _ = _report(manifest, mask)
    voxel = 8.0
    finding, first, second = _groups(sr)  # TID 1501 only: no volumetric group referencing the segment
    assert all(_items(g, "121191") == [] for g in (finding, first, second))
    (evaluation,) = _items(finding, "27925004")  # the finding's code as a qualitative evaluation
    assert evaluation.ConceptCodeSequence[0].CodeMeaning == "Present"
    (probability,) = _items(finding, "122157")
    assert float(probability.MeasuredValueSequence[0].NumericValue) == 0.9
    volumes = [float(_items(g, "118565006")[0].MeasuredValueSequence[0].NumericValue) for g in (first, second)]
    assert volumes == pytest.approx([64 * voxel, 27 * voxel], abs=1e-3)
    assert _items(first, "118565006")[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mm3"
    assert len(_items(first, "121112")) == 4  # source images: the 4 slices the first nodule lies on


def test_nothing_segmented_gives_an_sr_that_says_absent(manifest: Manifest) -> None:
    sr, evidence = _report(manifest, np.zeros((10, 10, 10), bool))
    (finding,) = _groups(sr)
    assert evidence == []
    assert _items(finding, "27925004")[0].ConceptCodeSequence[0].CodeMeaning == "Absent"
    assert float(_items(finding, "122157")[0].MeasuredValueSequence[0].NumericValue) == 0.0

