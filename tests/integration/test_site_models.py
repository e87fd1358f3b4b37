"""A site model without code: small ONNX models with analytic answers, dropped into a models folder.

The 3D threshold segmenter runs on axial, sagittal and coronal series, with and without resampling;
its SEG must equal the analytic mask on the source grid. The 2D region classifier runs on DX and CR
images (MONOCHROME1/2, with and without a VOI LUT); its SR must carry the expected finding and
probability. Every object written passes dciodvfy, every SR PixelMed's DicomSRValidator.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

import dicomnode
from dicomnode.inference.registry import Registry
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.pipeline import build_input, build_results
from tests.support.models import write_classifier, write_threshold_model
from tests.support.peers import dciodvfy, sr_validator
from tests.support.synthetic import make_radiograph, make_series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
THRESHOLD = 500.5
CENTRE = np.array([3.0, -4.0, 5.0])
SIGMA = 12.0


def job_for(datasets: list[Dataset], model_id: str, version: str) -> ClaimedJob:
    ds = datasets[0]
    return ClaimedJob(id=1, series_id=1, series_uid=str(ds.SeriesInstanceUID), series_number=int(ds.SeriesNumber),
                      study_uid=str(ds.StudyInstanceUID), patient_id=None, patient_name=None, model_id=model_id,
                      model_version=version, revision=1, attempts=1)


def ball_series(orientation: tuple[float, ...], n: int = 24, size: int = 40) -> list[Dataset]:
    """A series of a Gaussian blob (peak 1000) fixed in patient space, whatever the slice orientation."""
    spacing, step = (0.9, 1.1), 1.6
    row_cos, col_cos = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row_cos, col_cos)
    origin = CENTRE - normal * step * (n - 1) / 2 - (row_cos * spacing[1] + col_cos * spacing[0]) * (size - 1) / 2
    series = make_series(n, size, size, spacing=spacing, slice_step=step, orientation=orientation,
                         origin=tuple(origin), slope=1.0, intercept=0.0, series_description="CRASHTEST ball")
    rows, cols = np.mgrid[0:size, 0:size]
    for k, ds in enumerate(series):
        points = (origin + k * step * normal)[None, None] + rows[..., None] * spacing[0] * col_cos \
            + cols[..., None] * spacing[1] * row_cos
        value = 1000 * np.exp(-np.sum((points - CENTRE) ** 2, axis=-1) / (2 * SIGMA**2))
        ds.PixelData = np.round(value).astype(np.uint16).tobytes()
    return series


def analytic_masks(series: list[Dataset]) -> dict[str, np.ndarray]:
    return {str(ds.SOPInstanceUID): ds.pixel_array.astype(float) > THRESHOLD for ds in series}


def seg_masks(seg: Dataset) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, ...]]]:
    masks, positions = {}, {}
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        masks[uid] = frame.astype(bool)
        positions[uid] = tuple(round(float(v), 3) for v in item.PlanePositionSequence[0].ImagePositionPatient)
    return masks, positions


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float(np.count_nonzero(a & b)) / float(np.count_nonzero(a) + np.count_nonzero(b))


def run_segmenter(tmp_path: Path, series: list[Dataset], validate_sr: bool = False, **model: str | float
                  ) -> tuple[Dataset, Dataset]:
    """Run the threshold segmenter; every object passes dciodvfy, the SR PixelMed too when ``validate_sr``
    (the JVM validator is slow: one SR per kind of input is checked)."""
    write_threshold_model(tmp_path / "models", THRESHOLD, **model)  # type: ignore[arg-type]
    registry = Registry(tmp_path / "models", "cpu")
    manifest = registry.manifests["threshold-test"]
    image = build_input(manifest, series)
    result = registry.run(manifest.id, image)
    objects, outputs, _ = build_results(manifest, image, result, job_for(series, manifest.id, manifest.version))
    paths = []
    for ds in objects:
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy(path)[0] == [], path.name
        paths.append(path)
    assert outputs["Bright"] > 0
    seg, sr = (dcmread(p) for p in paths)
    if validate_sr:
        assert sr_validator(paths[1])[0] == []
    return seg, sr


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL, CORONAL], ids=["axial", "sagittal", "coronal"])
@pytest.mark.parametrize("canonical", ["source", "RAS", "LPS"])
def test_segmenter_gives_the_exact_mask_on_the_source_grid(tmp_path: Path, orientation: tuple[float, ...],
                                                            canonical: str) -> None:
    series = ball_series(orientation)
    seg, _ = run_segmenter(tmp_path, series, validate_sr=orientation == AXIAL and canonical == "source",
                           orientation=canonical)
    expected = analytic_masks(series)
    found, positions = seg_masks(seg)
    assert {u for u, m in expected.items() if m.any()} == set(found)  # a frame for each non-empty slice
    for uid, mask in found.items():
        assert np.array_equal(mask, expected[uid]), uid
    source_positions = {str(ds.SOPInstanceUID): tuple(round(float(v), 3) for v in ds.ImagePositionPatient)
                        for ds in series}
    assert all(source_positions[u] == p for u, p in positions.items())


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL, CORONAL], ids=["axial", "sagittal", "coronal"])
def test_segmenter_with_another_target_spacing_maps_back_onto_the_source(tmp_path: Path,
                                                                          orientation: tuple[float, ...]) -> None:
    series = ball_series(orientation)
    seg, _ = run_segmenter(tmp_path, series, orientation="RAS", input_extra="spacing = [1.3, 0.7, 2.2]",
                           gain=0.01)
    expected = analytic_masks(series)
    found, _ = seg_masks(seg)
    empty = np.zeros_like(next(iter(expected.values())))
    got = np.stack([found.get(u, empty) for u in expected])
    assert dice(got, np.stack(list(expected.values()))) >= 0.99


def test_segmenter_with_a_sliding_window_is_exact(tmp_path: Path) -> None:
    series = ball_series(AXIAL)
    seg, _ = run_segmenter(tmp_path, series, input_extra="[input.tiling]\nroi = [8, 16, 16]\noverlap = 0.5")
    expected = analytic_masks(series)
    found, _ = seg_masks(seg)
    assert all(np.array_equal(m, expected[u]) for u, m in found.items())
    assert {u for u, m in expected.items() if m.any()} == set(found)


def display(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """What a viewer shows, computed here from the standard (PS3.3 C.11.2.1.2, C.8.11.3.1.5), not from the node."""
    values = stored.astype(float)
    if "VOILUTSequence" in ds:
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=float)
        values = lut[np.clip(values.astype(int), 0, len(lut) - 1)]
    elif "WindowCenter" in ds:
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        values = np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    return -values if ds.PhotometricInterpretation == "MONOCHROME1" else values


def expected_probability(ds: Dataset, k: float = 8.0, c: float = 0.5) -> float:
    shown = display(ds.pixel_array, ds)
    normalised = (shown - shown.min()) / (shown.max() - shown.min())
    mean = float(normalised[48:80, 48:80].mean())
    return 1 / (1 + math.exp(-k * (mean - c)))


def radiograph(region_value: int, **options: object) -> Dataset:
    pixels = np.full((128, 128), 1000, dtype=np.uint16)
    pixels[48:80, 48:80] = region_value
    pixels[0, 0], pixels[-1, -1] = 0, 4095
    return make_radiograph(pixels, **options)  # type: ignore[arg-type]


SQRT_LUT = np.round(65535 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)
CASES = {
    "dx-mono2": {"modality": "DX"},
    "dx-mono1": {"modality": "DX", "monochrome1": True},
    "dx-window": {"modality": "DX", "window": (2000.0, 3000.0)},
    "dx-mono1-window": {"modality": "DX", "monochrome1": True, "window": (2095.0, 3000.0)},
    "cr-mono1-lut": {"modality": "CR", "monochrome1": True, "voi_lut": SQRT_LUT},
    "cr-mono2-lut": {"modality": "CR", "voi_lut": SQRT_LUT},
}


def walk(items):  # type: ignore[no-untyped-def]
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from walk(item.ContentSequence)


def classify(tmp_path: Path, ds: Dataset, explanation: str = "seg", validate_sr: bool = True
             ) -> tuple[list[Path], Dataset]:
    write_classifier(tmp_path / "models")
    registry = Registry(tmp_path / "models", "cpu")
    manifest = registry.manifests["region-classifier"]
    image = build_input(manifest, [ds])
    result = registry.run(manifest.id, image)
    objects, _, _ = build_results(manifest, image, result, job_for([ds], manifest.id, manifest.version), explanation)
    paths = []
    for obj in objects:
        path = tmp_path / f"{obj.Modality}-{len(paths)}.dcm"
        obj.save_as(path, enforce_file_format=True)
        assert dciodvfy(path)[0] == [], path.name
        paths.append(path)
    sr_path = next(p for p in paths if p.name.startswith("SR"))
    if validate_sr:
        assert sr_validator(sr_path)[0] == []
    return paths, dcmread(sr_path)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("region_value", [3000, 1200], ids=["bright", "faint"])
def test_classifier_gives_the_expected_finding_and_probability(tmp_path: Path, case: str, region_value: int) -> None:
    ds = radiograph(region_value, **CASES[case])
    probability = expected_probability(ds)
    paths, sr = classify(tmp_path, ds, validate_sr=case in ("dx-mono2", "cr-mono1-lut"))  # DX and CR, +/-
    (num,) = [i for i in walk(sr.ContentSequence) if i.ValueType == "NUM"]
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(probability, abs=2e-3)
    (finding,) = [i for i in walk(sr.ContentSequence) if i.ValueType == "CODE"
                  and i.ConceptNameCodeSequence[0].CodeValue == "263656001"]
    assert finding.ConceptCodeSequence[0].CodeMeaning == ("Present" if probability >= 0.5 else "Absent")
    assert sr.SeriesDescription.startswith("AI POSITIVE" if probability >= 0.5 else "AI negative")
    images = [i for i in walk(sr.ContentSequence) if i.ValueType == "IMAGE"]
    assert images and all(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID for i in images)
    segs = [dcmread(p) for p in paths if p.name.startswith("SEG")]
    assert len(segs) == (1 if probability >= 0.5 else 0)  # an explanation for positive classes only


def test_explanation_is_a_binary_seg_of_the_evidence_region(tmp_path: Path) -> None:
    ds = radiograph(3000, modality="DX")
    paths, _ = classify(tmp_path, ds)
    (seg,) = [dcmread(p) for p in paths if p.name.startswith("SEG")]
    assert seg.SegmentationType == "BINARY" and "PlaneOrientationSequence" in seg.SharedFunctionalGroupsSequence[0]
    heat = seg.pixel_array.astype(float)
    assert heat.shape == (128, 128)
    rows, columns = np.nonzero(heat)
    assert 40 <= rows.mean() < 88 and 40 <= columns.mean() < 88  # the evidence region lies on the opacity
    assert heat[48:80, 48:80].mean() > 4 * heat[:32, :32].mean()


def test_explanation_as_secondary_capture_overlay(tmp_path: Path) -> None:
    ds = radiograph(3000, modality="CR", monochrome1=True)
    paths, sr = classify(tmp_path, ds, explanation="sc")
    (sc,) = [dcmread(p) for p in paths if p.name.startswith("OT")]
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape == (128, 128, 3)
    assert sc.StudyInstanceUID == ds.StudyInstanceUID
    assert sc.SeriesDescription == "AI evidence overlay (region-classifier)"  # what the study browser lists
    assert (sc.Manufacturer, sc.ManufacturerModelName, sc.SoftwareVersions) == (
        sr.Manufacturer, sr.ManufacturerModelName, sr.SoftwareVersions) == (
        "dicomnode", "dicomnode AI node", f"dicomnode {dicomnode.__version__}; region-classifier 2.1")
    rgb = sc.pixel_array.astype(int)
    assert (rgb[60, 60, 0] - rgb[60, 60, 2]) > 50  # red over the region: the evidence
    assert rgb[5, 5, 0] == rgb[5, 5, 1] == rgb[5, 5, 2]  # grey elsewhere
    assert not any(p.name.startswith("SEG") for p in paths)
    assert sr.SOPInstanceUID


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_segmenter_on_an_enhanced_multiframe_image(tmp_path: Path, orientation: tuple[float, ...]) -> None:
    import highdicom as hd

    series = ball_series(orientation)
    rng = np.random.default_rng(3)
    shuffled = [series[i] for i in rng.permutation(len(series))]  # frames not in spatial order
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        shuffled, series_instance_uid=hd.UID(), series_number=8, sop_instance_uid=hd.UID(), instance_number=1)
    enhanced.SeriesDescription = "CRASHTEST enhanced"
    seg, _ = run_segmenter(tmp_path, [enhanced], validate_sr=orientation == AXIAL, orientation="RAS")
    frames = enhanced.pixel_array.astype(float) > THRESHOLD
    masks = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns)).astype(bool)
    referenced = [int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                  for item in seg.PerFrameFunctionalGroupsSequence]
    assert sorted(referenced) == [i + 1 for i in range(len(frames)) if frames[i].any()]
    for mask, frame in zip(masks, referenced, strict=True):
        assert np.array_equal(mask, frames[frame - 1]), frame
