"""De-identification to PS3.15 Table E.1-1 (dicom-anonymizer's table and the supplement), its options,
the burned-in annotation rule, and re-identification."""

from __future__ import annotations

import datetime as dt
from copy import deepcopy
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.inference.registry import Manifest
from dicomnode.remote import options as opt
from dicomnode.remote.backend import BURNED_IN_PRONE, NotSentToRemote, burned_in, remote_backend, runs_remote
from dicomnode.remote.deid import deidentify, reidentify, table, tags
from dicomnode.settings import Settings
from tests.support.models import write_threshold_model
from tests.support.spooled import queue_job, spool
from tests.support.synthetic import make_series

NAME, PID, BIRTH, ACCESSION = "SECRET^NAME", "PID-SECRET-1", "19500607", "ACC-SECRET-9"
INSTITUTION, DOCTOR = "ST ELSEWHERE CLINIC", "HOUSE^GREGORY"
MARK = "DOE^JOHN"  # the name in every attribute of the table test
MARKERS = {  # a value per VR, each carrying the name where the VR allows text
    "PN": MARK, "LO": f"{MARK} 4242", "LT": f"{MARK} 4242", "ST": f"{MARK} 4242", "UT": f"{MARK} 4242",
    "UC": f"{MARK} 4242", "SH": "DOE JOHN 4242", "AE": "DOEJOHN", "CS": "DOEJOHN", "DA": "19610203",
    "TM": "101112", "DT": "19610203101112", "AS": "063Y", "UR": "http://doe.john/", "DS": "42.5", "IS": "4242",
    "US": 4242, "SS": 4242, "UL": 4242, "SL": 4242, "FL": 42.5, "FD": 42.5, "OB": b"DOEJOHN!",
    "OW": b"DOEJOHN!", "UN": b"DOEJOHN!", "AT": 0x00100010,
}


def _series() -> list[Dataset]:
    series = make_series(n_slices=4, rows=8, columns=8, patient_name=NAME, patient_id=PID,
                         series_description=f"T1 MPRAGE {NAME.replace('^', ' ').lower()}")
    for ds in series:
        ds.PatientBirthDate, ds.AccessionNumber = BIRTH, ACCESSION
        ds.StudyDate, ds.SeriesDate, ds.AcquisitionDateTime = "20200315", "20200316", "20200316101112.5"
        ds.StudyDescription = f"BRAIN {NAME.split('^')[0]} {PID}"
        ds.InstitutionName, ds.ReferringPhysicianName, ds.OperatorsName = INSTITUTION, DOCTOR, DOCTOR
        ds.ImageComments = f"for {NAME.split('^')[1].lower()} born 07.06.1950"
        ds.PatientAge, ds.PatientSex = "070Y", "F"
        ds.add_new((0x0011, 0x0010), "LO", "ACME PRIVATE")
        ds.add_new((0x0011, 0x1001), "LO", "vendor secret")
    return series


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _bytes_but_uids(ds: Dataset) -> bytes:
    """The dataset's bytes with its UID values left out: a new UID is a string of digits (2.25.<hash>),
    and one that happens to hold "1950" says nothing of the patient; the original UIDs are looked for
    in :func:`_bytes`, whole."""
    copy = deepcopy(ds)
    del copy.file_meta
    copy.walk(lambda parent, element: parent.__delitem__(element.tag) if element.VR == "UI" else None)
    buffer = BytesIO()
    copy.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _uids(series: list[Dataset]) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in series} | {str(series[0].StudyInstanceUID),
                                                        str(series[0].SeriesInstanceUID),
                                                        str(series[0].FrameOfReferenceUID)}


# --- Table E.1-1, attribute by attribute ------------------------------------------------------------

def _item(n: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.98.{n}"
    item.PatientName = MARK
    return item


def _every_attribute() -> tuple[Dataset, dict[int, str]]:
    """One dataset with every single-tag attribute of the library's table that pydicom knows, each with
    a marker value; and the table's action for each (``"X"``, ``"X/Z/U*"``, ...)."""
    ds = Dataset()
    actions: dict[int, str] = {}
    for name in table():
        if name == "ALL_TAGS":
            continue
        for n, (group, element) in enumerate(tags(name)):
            tag = group << 16 | element
            try:
                vr = dictionary_VR(tag).split(" or ")[0]
            except KeyError:  # newer than this pydicom
                continue
            if group in (0x0000, 0x0002):  # command set and file meta: not in a dataset's body
                continue
            value = [_item(n)] if vr == "SQ" else (f"1.2.826.0.1.3680043.99.{tag}" if vr == "UI" else MARKERS[vr])
            ds[tag] = DataElement(tag, vr, value)
            actions[tag] = name.removesuffix("_TAGS").replace("_STAR", "*").replace("_", "/")
    return ds, actions


def _survives(before: DataElement, after: DataElement) -> bool:
    """Whether anything of ``before`` is still in ``after`` (in a sequence: the name or the item's UID)."""
    if before.VR == "SQ":
        return any(MARK in str(item.get("PatientName", "")) or
                   str(item.get("ReferencedSOPInstanceUID", "")).startswith("1.2.826.0.1.3680043.98.")
                   for item in after.value)
    return bool(after.value) and after.value == before.value


def test_every_attribute_of_the_table_gets_its_action() -> None:
    ds, actions = _every_attribute()
    assert len(actions) > 550 and {"X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"} == set(actions.values())
    (out,), uid_map = deidentify([ds], "seed")
    wrong = []
    for tag, action in actions.items():
        before, after = ds[tag], out.get(tag)
        if after is None:
            ok = action.startswith("X")  # X, X/Z, X/D, X/Z/D, X/Z/U*: removal is the table's first choice
        elif action == "X":
            ok = False
        elif action == "U":
            ok = after.value == uid_map[before.value]
        else:  # Z, D, Z/D, and the Z, D or U* alternative of X/...: present, nothing of the original left
            ok = not _survives(before, after) and (action not in ("D", "Z/D") or bool(after.value))
        if not ok:
            wrong.append(f"{before.keyword or f'{tag:08X}'} {action}: {after!r}")
    assert wrong == []


def test_the_table_applies_inside_sequences_that_are_kept() -> None:
    ds = make_series(n_slices=1, rows=4, columns=4)[0]
    outer = Dataset()  # Referenced Series Sequence is not in the table: kept, its items de-identified
    outer.SeriesInstanceUID = ds.SeriesInstanceUID
    outer.ReferencedInstanceSequence = [_item(1)]
    outer.InstitutionName = INSTITUTION
    ds.ReferencedSeriesSequence = [outer]
    assert (0x0008, 0x1115) not in tags("ALL_TAGS")
    (out,), uid_map = deidentify([ds], "seed")
    item = out.ReferencedSeriesSequence[0]
    assert item.SeriesInstanceUID == uid_map[str(ds.SeriesInstanceUID)] == out.SeriesInstanceUID
    inner = item.ReferencedInstanceSequence[0]
    assert inner.ReferencedSOPInstanceUID == uid_map["1.2.826.0.1.3680043.98.1"] and not inner.PatientName
    assert INSTITUTION.encode() not in _bytes(out)


# --- what leaves for a real series ------------------------------------------------------------------

def test_no_name_identifier_description_or_original_uid_is_left() -> None:
    series = _series()
    copies, uid_map = deidentify(series, "seed")
    assert _uids(series) <= set(uid_map)
    uids = _uids(series)
    secrets = [NAME, *NAME.split("^"), PID, BIRTH, BIRTH[:4], ACCESSION, INSTITUTION, *DOCTOR.split("^"),
               "vendor secret", "MPRAGE", "07.06.1950", *uids]
    for ds, original in zip(copies, series, strict=True):
        data, values = _bytes(ds).upper(), _bytes_but_uids(ds).upper()
        assert [s for s in secrets if s.upper().encode() in (data if s in uids else values)] == []
        assert not [e for e in ds if e.tag.is_private]
        assert "StudyDescription" not in ds and "SeriesDescription" not in ds and "ImageComments" not in ds
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PixelData == original.PixelData  # pixels and geometry: what the model needs
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                        "Rows", "Columns", "RescaleSlope", "RescaleIntercept", "Modality", "SOPClassUID"):
            assert ds[keyword].value == original[keyword].value, keyword
    assert series[0].PatientName == NAME  # the originals are untouched


def test_identity_removed_and_the_method_codes_are_set() -> None:
    (basic,), _ = deidentify(_series()[:1], "seed")
    assert basic.PatientIdentityRemoved == "YES" and basic.LongitudinalTemporalInformationModified == "REMOVED"
    assert [(c.CodeValue, c.CodingSchemeDesignator) for c in basic.DeidentificationMethodCodeSequence] == [
        ("113100", "DCM")]
    assert any("dicom-anonymizer" in v for v in basic.DeidentificationMethod)
    (more,), _ = deidentify(_series()[:1], "seed", [opt.CLEAN_DESCRIPTORS, opt.MODIFIED_DATES])
    assert [c.CodeValue for c in more.DeidentificationMethodCodeSequence] == ["113100", "113107", "113105"]
    assert more.DeidentificationMethodCodeSequence[1].CodeMeaning == \
        "Retain Longitudinal Temporal Information Modified Dates Option"


# --- the options --------------------------------------------------------------------------------------

def test_modified_dates_are_shifted_with_their_year_and_intervals_kept() -> None:
    series = _series()
    (ds, *_), _ = deidentify(series, "seed", [opt.MODIFIED_DATES])
    study, before = dt.date.fromisoformat(ds.StudyDate), dt.date(2020, 3, 15)
    assert 366 <= (before - study).days <= 3652 and study.year != 2020  # no original date, nor its year
    assert dt.date.fromisoformat(ds.SeriesDate) - study == dt.timedelta(days=1)  # intervals kept
    assert ds.AcquisitionDateTime == ds.SeriesDate + "101112.5"  # the time of day is kept
    assert BIRTH not in str(ds.get("PatientBirthDate", "")) and "1950" not in _bytes(ds).decode("latin-1")
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert deidentify(series, "seed", [opt.MODIFIED_DATES])[0][0].StudyDate == ds.StudyDate


def test_every_value_of_a_multi_valued_uid_or_date_gets_its_own_replacement() -> None:
    """VM 1-n: each UID of a list gets its own new UID, mapped back to it; under the modified-dates option
    each date of a list is shifted by the job's offset (the study date's), none dropped or merged."""
    (original,) = _series()[:1]
    events = ["1.2.826.0.1.3680043.7.1", "1.2.826.0.1.3680043.7.2"]
    original.IrradiationEventUID = events
    original.SelectorDAValue = ["20200315", "20200415"]
    (ds,), uid_map = deidentify([original], "seed", [opt.MODIFIED_DATES])
    assert list(ds.IrradiationEventUID) == [uid_map[uid] for uid in events]
    assert len(set(ds.IrradiationEventUID) | set(events)) == 4
    shift = dt.date(2020, 3, 15) - dt.date.fromisoformat(ds.StudyDate)
    assert [dt.date.fromisoformat(v) for v in ds.SelectorDAValue] == [dt.date(2020, 3, 15) - shift,
                                                                      dt.date(2020, 4, 15) - shift]


def test_clean_descriptors_keep_the_protocol_words_and_drop_names_and_identifiers() -> None:
    (ds, *_), _ = deidentify(_series(), "seed", [opt.CLEAN_DESCRIPTORS])
    assert (ds.SeriesDescription, ds.StudyDescription) == ("T1 MPRAGE", "BRAIN")
    assert ds.ImageComments == "for born"  # "for <name> born 07.06.1950"
    assert "InstitutionName" not in ds or ds.InstitutionName != INSTITUTION  # not a descriptor: Basic action


def test_clean_descriptors_keep_a_word_that_only_a_uid_holds() -> None:
    """UIDs are replaced, not read as identifying text: a description word that is also a component of one
    of the instance's UIDs stays."""
    series = _series()
    for ds in series:
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.543"
        ds.SeriesDescription = "T1 MPRAGE 10 543"
    (ds, *_), _ = deidentify(series, "seed", [opt.CLEAN_DESCRIPTORS])
    assert ds.SeriesDescription == "T1 MPRAGE 10 543"


def test_patient_characteristics_are_kept_only_under_their_option() -> None:
    (basic,), _ = deidentify(_series()[:1], "seed")
    original = _series()[0]
    (kept,), kept_map = deidentify([original], "seed", [opt.PATIENT_CHARACTERISTICS])
    assert "PatientAge" not in basic and not basic.PatientSex
    assert (kept.PatientAge, kept.PatientSex) == ("070Y", "F")
    # the option adds to the basic profile and its supplement; it replaces none of them
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate"):
        assert (keyword in kept, kept.get(keyword)) == (keyword in basic, basic.get(keyword)), keyword
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):  # each mapped, to come back
        assert kept_map[original[keyword].value] == kept[keyword].value != original[keyword].value, keyword


def test_an_unknown_option_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        deidentify(_series()[:1], "seed", ["retain-everything"])


# --- UIDs and re-identification ----------------------------------------------------------------------

def test_the_same_seed_gives_the_same_uids() -> None:
    series = _series()
    assert deidentify(series, "a")[1] == deidentify(series, "a")[1] != deidentify(series, "b")[1]


def test_reidentify_maps_uids_back_and_restores_the_patient() -> None:
    series = _series()
    copies, uid_map = deidentify(series, "seed")
    result = Dataset()
    result.SOPInstanceUID = "1.2.3.4"  # made by the cloud: not in the map, kept
    result.StudyInstanceUID = copies[0].StudyInstanceUID
    result.PatientName, result.PatientID = copies[0].PatientName, copies[0].PatientID
    result.PatientIdentityRemoved = "YES"
    result.IssuerOfPatientID = "CLOUD"  # the original has none: what the cloud wrote must not stay
    item = Dataset()
    item.ReferencedSOPInstanceUID = copies[1].SOPInstanceUID
    result.ReferencedInstanceSequence = [item]
    back = reidentify(result, uid_map, series[0])
    assert back.SOPInstanceUID == "1.2.3.4" and back.StudyInstanceUID == series[0].StudyInstanceUID
    assert back.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == series[1].SOPInstanceUID
    assert (str(back.PatientName), back.PatientID, back.PatientBirthDate, back.AccessionNumber) == (
        NAME, PID, BIRTH, ACCESSION)
    assert "PatientIdentityRemoved" not in back
    assert "IssuerOfPatientID" not in series[0] and "IssuerOfPatientID" not in back
    # a copy: the cloud's result, nested sequences too, is left as it came
    assert result.StudyInstanceUID == copies[0].StudyInstanceUID and result.IssuerOfPatientID == "CLOUD"
    assert result.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == copies[1].SOPInstanceUID


# --- burned-in annotation -----------------------------------------------------------------------------

def test_the_burned_in_prone_classes_are_known_sop_classes() -> None:
    assert all(UID(u).is_valid and UID(u).name != u for u in BURNED_IN_PRONE)


@pytest.mark.parametrize(("sop_class", "flag", "expected"), [
    ("1.2.840.10008.5.1.4.1.1.4", None, False),  # MR without the attribute
    ("1.2.840.10008.5.1.4.1.1.4", "YES", True),
    ("1.2.840.10008.5.1.4.1.1.7", None, True),  # Secondary Capture without the attribute
    ("1.2.840.10008.5.1.4.1.1.7", "NO", False),
    ("1.2.840.10008.5.1.4.1.1.6.1", None, True),  # Ultrasound
    ("1.2.840.10008.5.1.4.1.1.77.1.4", None, True),  # VL Photographic (XC)
])
def test_burned_in(sop_class: str, flag: str | None, expected: bool) -> None:
    series = make_series(n_slices=2, rows=4, columns=4)
    series[1].SOPClassUID = sop_class
    if flag is not None:
        series[1].BurnedInAnnotation = flag
    assert burned_in(series) is expected


def _manifest(folder: Path, placement: str) -> Manifest:
    model = write_threshold_model(folder, 40.0)
    with open(model / "manifest.toml", "a") as manifest:
        manifest.write(f'\n[remote]\nurl = "https://cloud.example.org"\nuser = "edge"\n'
                       f'password_file = "/nonexistent"\nplacement = "{placement}"\nmax_local_queue = 0\n')
    return Manifest.read(model / "manifest.toml")


def _burned(flag: str) -> list[Dataset]:
    series = make_series(n_slices=2, rows=4, columns=4)
    for ds in series:
        ds.BurnedInAnnotation = flag
    return series


def test_a_burned_in_series_runs_here_when_the_model_is_installed(
        tmp_path: Path, settings: Settings, sessions: sessionmaker[Session]) -> None:
    manifest = _manifest(tmp_path, "prefer-local")
    series = make_series(n_slices=2, rows=4, columns=4)
    spool(settings, sessions, series)
    queue_job(sessions, str(series[0].SeriesInstanceUID))  # the local queue is longer than 0: remote
    assert runs_remote(manifest, remote_backend(manifest), sessions, _burned("NO"))
    assert not runs_remote(manifest, remote_backend(manifest), sessions, _burned("YES"))


@pytest.mark.parametrize("placement", ["remote", "prefer-local"])
def test_a_burned_in_series_that_cannot_run_here_is_not_sent(tmp_path: Path, sessions: sessionmaker[Session],
                                                             placement: str) -> None:
    manifest = _manifest(tmp_path, placement)
    (manifest.directory / "model.onnx").unlink()
    with pytest.raises(NotSentToRemote, match=r"^not sent to the remote model: burned-in annotation$"):
        runs_remote(manifest, remote_backend(manifest), sessions, _burned("YES"))


def test_each_job_seed_gives_its_own_date_offset_within_the_range() -> None:
    """The offset is the seed's (a hash of it), 366 to 3652 days: two jobs' dates are not moved alike, so
    one job's offset, once known, tells nothing of another's."""
    offsets = {opt.shift_days(f"job-{n}") for n in range(50)}
    assert len(offsets) >= 45 and min(offsets) >= 366 and max(offsets) <= 3652
    assert opt.shift_days("job-1") == opt.shift_days("job-1")
