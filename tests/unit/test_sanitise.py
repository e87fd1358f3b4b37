from __future__ import annotations

from pydicom import config
from pydicom.dataelem import DataElement

from dicomnode.results.sanitise import sanitise_header
from tests.support.synthetic import make_series


def test_dirty_patient_header_is_cleaned() -> None:
    source = make_series(n_slices=1)[0]
    source.add(DataElement(0x00100040, "CS", "0000", validation_mode=config.IGNORE))  # PatientSex
    source.add(DataElement(0x00081030, "LO", "BRAIN\x00", validation_mode=config.IGNORE))  # StudyDescription
    source.add(DataElement(0x00100030, "DA", "19xx0101", validation_mode=config.IGNORE))  # PatientBirthDate
    del source.AccessionNumber
    del source.ReferringPhysicianName
    clean = sanitise_header(source)
    assert clean.PatientSex == ""
    assert clean.StudyDescription == "BRAIN"
    assert clean.PatientBirthDate == ""
    assert clean.AccessionNumber == "" and clean.ReferringPhysicianName == ""
    assert "PixelData" not in clean
    assert clean.SOPInstanceUID == source.SOPInstanceUID


def test_source_is_not_modified() -> None:
    source = make_series(n_slices=1)[0]
    source.add(DataElement(0x00100040, "CS", "0000", validation_mode=config.IGNORE))
    sanitise_header(source)
    assert source.PatientSex == "0000" and "PixelData" in source


def test_valid_values_are_kept() -> None:
    source = make_series(n_slices=1)[0]
    clean = sanitise_header(source)
    assert (clean.PatientSex, clean.PatientBirthDate, clean.StudyTime) == ("O", "19700101", "120000")
