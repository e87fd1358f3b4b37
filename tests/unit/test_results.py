"""SEG and SR building on synthetic data (real data: tests/integration/test_results_real.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomnode.errors import BuildError
from dicomnode.inference.registry import Manifest, load_manifests
from dicomnode.inference.result import Component
from dicomnode.inference.volume import build_volume
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.files import job_folder, result_series_uids
from dicomnode.results.notice import build_failure_notice
from dicomnode.results.sanitise import sanitise_header, sanitise_headers
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_sr, component_anchor, procedure_reported, segment_volumes_ml
from tests.support.peers import REPO
from tests.support.results import box_seg
from tests.support.synthetic import make_series


@pytest.fixture
def manifest() -> Manifest:
    return load_manifests(REPO / "models")["deepbet"]


def _build(manifest: Manifest, series_uid_seed: list | None = None):  # type: ignore[no-untyped-def,type-arg]
    box = box_seg(manifest, series_uid_seed)
    sr = build_sr(box.seg, box.sources, box.volumes, manifest, box.identity)
    return box.series, box.volume, box.labels, box.seg, sr


def test_seg_frames_sit_on_source_slices(manifest: Manifest) -> None:
    series, volume, labels, seg, _ = _build(manifest)
    assert seg.StudyInstanceUID == series[0].StudyInstanceUID
    assert seg.NumberOfFrames == 5  # empty slices are omitted
    positions = {tuple(map(float, ds.ImagePositionPatient)): ds.SOPInstanceUID for ds in volume.datasets}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = tuple(map(float, frame.PlanePositionSequence[0].ImagePositionPatient))
        referenced = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert positions[position] == referenced
    assert int(np.count_nonzero(seg.pixel_array)) == int(labels.sum())


def test_seg_codes_and_algorithm_come_from_the_manifest(manifest: Manifest) -> None:
    *_, seg, _ = _build(manifest)
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Brain"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "12738006"
    assert segment.SegmentAlgorithmName == manifest.name
    assert seg.ContentLabel == "AI_SEG"


def test_sr_volume_is_voxel_count_times_voxel_volume(manifest: Manifest) -> None:
    _, volume, labels, seg, sr = _build(manifest)
    expected_ml = labels.sum() * volume.voxel_volume_mm3 / 1000
    values = [item for item in _walk(sr.ContentSequence) if item.ValueType == "NUM"]
    assert len(values) == 1
    measured = values[0].MeasuredValueSequence[0]
    assert float(measured.NumericValue) == pytest.approx(expected_ml, abs=1e-3)
    assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "ml"
    assert sr.StudyInstanceUID == seg.StudyInstanceUID
    assert sr.SeriesInstanceUID != seg.SeriesInstanceUID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # TID 300: the measurement names the algorithm that made it (111001 Algorithm Name, 111003 Version)
    (number,) = values
    said = {item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
            for item in number.get("ContentSequence", []) if item.ValueType == "TEXT"}
    assert (said.get("111001"), said.get("111003")) == (manifest.name, manifest.version)


def _walk(items):  # type: ignore[no-untyped-def]
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def test_uids_are_deterministic(manifest: Manifest) -> None:
    series = make_series(n_slices=10, rows=16, columns=12)
    *_, seg1, sr1 = _build(manifest, series)
    *_, seg2, sr2 = _build(manifest, series)
    assert (seg1.SOPInstanceUID, seg1.SeriesInstanceUID, sr1.SOPInstanceUID) == \
        (seg2.SOPInstanceUID, seg2.SeriesInstanceUID, sr2.SOPInstanceUID)
    assert seg1.SeriesNumber == manifest.series_number_base + 7
    assert sr1.SeriesNumber == manifest.series_number_base + 107


def test_empty_mask_is_a_build_error(manifest: Manifest) -> None:
    volume = build_volume(make_series(n_slices=4))
    identity = ResultIdentity.for_job("1.2.3", 1, manifest)
    with pytest.raises(BuildError, match="found nothing"):
        build_seg(sanitise_headers(volume.datasets), np.zeros(volume.array.shape, np.uint8), manifest, identity)


def test_written_objects_read_back(manifest: Manifest, tmp_path: Path) -> None:
    *_, seg, sr = _build(manifest)
    seg.save_as(tmp_path / "seg.dcm")
    sr.save_as(tmp_path / "sr.dcm")
    assert dcmread(tmp_path / "seg.dcm").Modality == "SEG"
    assert dcmread(tmp_path / "sr.dcm").Modality == "SR"


@pytest.mark.parametrize(("modality", "expected"), [("MR", "25056-3"), ("CT", "25045-6"), ("DX", "363679005"),
                                                    ("CR", "363679005"), ("PT", "44136-0"), ("US", "363679005")])
def test_procedure_reported_comes_from_cid_100_by_modality(modality: str, expected: str) -> None:
    assert procedure_reported(modality).value == expected


# what highdicom sets from the clock or a random UID on every build
_VARYING = ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime", "ContributionDateTime",
            "DimensionOrganizationUID")


def _comparable(ds: Dataset) -> dict[str, object]:
    """``ds`` as a JSON dict, with the values highdicom takes from the clock or a random UID blanked."""
    out = ds.copy()

    def blank(dataset: Dataset, elem: DataElement) -> None:
        if elem.keyword in _VARYING:
            elem.value = ""

    out.walk(blank)
    return out.to_json_dict()


def test_results_from_reference_headers_equal_those_from_whole_headers(manifest: Manifest) -> None:
    """Only the first source is sanitised whole: the SEG and SR are the same as from every source whole."""
    series = make_series(n_slices=10, rows=16, columns=12)
    volume = build_volume(series)
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[2:7, 4:10, 3:9] = 1
    identity = ResultIdentity.for_job(str(series[0].SeriesInstanceUID), 7, manifest)
    volumes = segment_volumes_ml(labels, volume.voxel_volume_mm3, manifest)
    built = []
    for sources in (sanitise_headers(volume.datasets), [sanitise_header(ds) for ds in volume.datasets]):
        seg = build_seg(sources, labels, manifest, identity)
        built.append((seg, build_sr(seg, sources, volumes, manifest, identity)))
    (seg_lean, sr_lean), (seg_whole, sr_whole) = built
    assert len(sanitise_headers(volume.datasets)[1]) < len(sanitise_header(volume.datasets[1])) / 2
    assert _comparable(seg_lean) == _comparable(seg_whole)
    assert _comparable(sr_lean) == _comparable(sr_whole)


@pytest.mark.parametrize(("source_number", "offset"), [(7, 207), (107, 207), (None, 200)])
def test_a_failure_notice_s_series_number_is_the_base_plus_200_plus_the_source_s(
        manifest: Manifest, source_number: int | None, offset: int) -> None:
    """models/README.md: failure notice at series_number_base + 200 + n, n = the source's SeriesNumber mod 100."""
    source = make_series(n_slices=1, rows=8, columns=8)[0]
    notice = build_failure_notice([source], manifest, "model output was empty", source_number, 1)
    assert notice.SeriesNumber == manifest.series_number_base + offset


def test_a_failure_notice_that_cannot_be_built_says_so_with_the_cause(manifest: Manifest) -> None:
    """A source without the study's identity (no Study Instance UID): BuildError, saying what could not be
    built and why, for the job's reason and the log."""
    source = make_series(n_slices=1, rows=8, columns=8)[0]
    del source.StudyInstanceUID
    with pytest.raises(BuildError, match=r"^failure notice could not be built: \S"):
        build_failure_notice([source], manifest, "model output was empty", 7, 1)


def test_a_jobs_result_series_are_read_from_its_files_an_unreadable_one_naming_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The series the PACS may hold from a job (what the PACS count check sets aside): every readable
    result file's series, a damaged one skipped wherever the folder lists it (here: by name, first)."""
    listed = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(sorted(listed(self, pattern))))
    folder = job_folder(tmp_path, 7)
    folder.mkdir(parents=True)
    series = [make_series(n_slices=1, rows=4, columns=4)[0] for _ in range(3)]
    for n, ds in enumerate(series):
        ds.save_as(folder / f"{n}-result.dcm", enforce_file_format=True)
    for name in ("0-damaged.dcm", "9-damaged.dcm"):  # before and after the others
        (folder / name).write_bytes(b"not DICOM")
    assert result_series_uids(tmp_path, 7) == {str(ds.SeriesInstanceUID) for ds in series}
    assert result_series_uids(tmp_path, 8) == set()  # a job with no folder


@pytest.mark.parametrize(("slices", "centroid", "drawn_on"), [
    ((2, 3, 4, 5, 6), (4.4, 1.0, 2.0), 4),  # a ball: its middle slice
    ((1, 2, 7, 8), (4.6, 1.0, 2.0), 7),  # a horseshoe: the touched slice nearest the centroid, not its first
])
def test_a_component_is_drawn_on_the_slice_it_touches_nearest_its_centroid(
        slices: tuple[int, ...], centroid: tuple[float, float, float], drawn_on: int) -> None:
    sources = make_series(n_slices=9, rows=8, columns=8)
    part = Component(label=1, voxels=10, volume_mm3=10.0, max_probability=0.9, slices=slices, centroid=centroid)
    anchor = component_anchor(sources, part)
    assert (anchor.image, anchor.frame, anchor.column, anchor.row) == (sources[drawn_on], None, 2.5, 1.5)
