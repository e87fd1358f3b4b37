from __future__ import annotations

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

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


def test_sequences_are_cleaned_in_the_copy_only() -> None:
    source = make_series(n_slices=1)[0]
    item = Dataset()
    item.add(DataElement(0x00080104, "LO", "Brain\x00", validation_mode=config.IGNORE))  # CodeMeaning
    source.AnatomicRegionSequence = Sequence([item])
    clean = sanitise_header(source)
    assert clean.AnatomicRegionSequence[0].CodeMeaning == "Brain"
    assert source.AnatomicRegionSequence[0].CodeMeaning == "Brain\x00"  # the source's item is untouched


def test_uids_are_never_cut_and_the_file_meta_is_kept() -> None:
    """A UID is an identity: cut to the UI length, an over-long (invalid) one would name another instance."""
    source = make_series(n_slices=1)[0]
    long_uid = "1.2.826.0.1.3680043.10.543." + "1234567890" * 4 + "\x00"  # 67 characters after its NUL
    source.add(DataElement(0x00080018, "UI", long_uid, validation_mode=config.IGNORE))  # SOPInstanceUID
    clean = sanitise_header(source)
    assert clean.SOPInstanceUID == long_uid.rstrip("\x00") and len(clean.SOPInstanceUID) == 67
    assert clean.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert clean.file_meta is not source.file_meta


def test_malformed_times_become_empty_and_names_with_groups_are_kept() -> None:
    source = make_series(n_slices=1)[0]
    source.add(DataElement(0x00080030, "TM", "25:61", validation_mode=config.IGNORE))  # StudyTime
    source.add(DataElement(0x00080090, "PN", "Yamada=やまだ", validation_mode=config.IGNORE))  # ReferringPhysician
    source.add(DataElement(0x00100010, "PN", "DOE", validation_mode=config.IGNORE))  # PatientName, family name only
    clean = sanitise_header(source)
    assert clean.StudyTime == ""
    assert str(clean.ReferringPhysicianName) == "Yamada=やまだ"  # component groups: no "^" added
    assert str(clean.PatientName) == "DOE^"


def test_a_text_value_kept_as_bytes_loses_its_nuls_and_padding() -> None:
    """A source's text value still in its raw bytes (an unknown character set, read leniently) is cleaned
    as a decoded one is: NUL bytes out, padding stripped."""
    source = make_series(n_slices=1)[0]
    source.add(DataElement(0x00081030, "LO", b" BRAIN\x00\x00 ", validation_mode=config.IGNORE))
    assert sanitise_header(source)["StudyDescription"].value == b"BRAIN"
