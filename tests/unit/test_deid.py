"""De-identification (dicognito, Annex E Basic profile, private tags removed) and re-identification."""

from __future__ import annotations

from io import BytesIO

from pydicom.dataset import Dataset

from dicomnode.remote.deid import deidentify, reidentify
from tests.support.synthetic import make_series

NAME, PID, BIRTH, ACCESSION = "SECRET^NAME", "PID-SECRET-1", "19500607", "ACC-SECRET-9"


def _series() -> list[Dataset]:
    series = make_series(n_slices=4, rows=8, columns=8, patient_name=NAME, patient_id=PID)
    for ds in series:
        ds.PatientBirthDate, ds.AccessionNumber = BIRTH, ACCESSION
        ds.add_new((0x0011, 0x0010), "LO", "ACME PRIVATE")
        ds.add_new((0x0011, 0x1001), "LO", "vendor secret")
    return series


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_no_identifier_or_original_uid_is_left() -> None:
    series = _series()
    copies, uid_map = deidentify(series, "seed")
    originals = {str(ds.SOPInstanceUID) for ds in series} | {str(series[0].StudyInstanceUID),
                                                            str(series[0].SeriesInstanceUID)}
    assert originals <= set(uid_map)
    for ds in copies:
        data = _bytes(ds)
        for secret in (NAME, PID, BIRTH, ACCESSION, "vendor secret", *originals):
            assert secret.encode() not in data, secret
        assert not [e for e in ds if e.tag.is_private]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert series[0].PatientName == NAME  # the originals are untouched


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
    item = Dataset()
    item.ReferencedSOPInstanceUID = copies[1].SOPInstanceUID
    result.ReferencedInstanceSequence = [item]
    back = reidentify(result, uid_map, series[0])
    assert back.SOPInstanceUID == "1.2.3.4" and back.StudyInstanceUID == series[0].StudyInstanceUID
    assert back.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == series[1].SOPInstanceUID
    assert (str(back.PatientName), back.PatientID, back.PatientBirthDate, back.AccessionNumber) == (
        NAME, PID, BIRTH, ACCESSION)
    assert "PatientIdentityRemoved" not in back
