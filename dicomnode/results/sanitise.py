"""Clean copies of source headers, so that what the node writes is valid even when what it read is not.

Real PACS headers are dirty (../shared/data/README.md): PatientSex "0000", NUL-padded strings, absent
Type 2 attributes. highdicom copies the patient and study modules from the source images, so the node
hands it cleaned copies; the files in the spool are never modified.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT", "UI"}
_DA_RE = re.compile(r"^\d{8}$")
_TM_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_SEX = {"M", "F", "O"}
# Type 2 attributes of the Patient and General Study modules that highdicom copies from the source
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "AccessionNumber")


def _clean_text(value: object) -> object:
    if isinstance(value, str):
        return value.replace("\x00", "").strip()
    if isinstance(value, bytes):
        return value.replace(b"\x00", b"").strip()
    return value


def _clean_element(elem: DataElement) -> None:
    if elem.VR == "SQ":
        for item in elem.value:
            _clean_dataset(item)
        return
    if elem.VR not in _TEXT_VRS or elem.value is None:
        return
    if elem.VM > 1:
        elem.value = [_clean_text(v) for v in elem.value]
    else:
        elem.value = _clean_text(elem.value)


def _clean_dataset(ds: Dataset) -> None:
    for elem in ds:
        _clean_element(elem)


def sanitise_header(source: Dataset) -> Dataset:
    """A cleaned deep copy of ``source`` without pixel data.

    NULs are removed from strings, PatientSex outside M/F/O, and dates and times that are not
    well-formed, become empty, and absent Type 2 patient/study attributes are added empty.
    """
    ds = Dataset()
    for elem in source:
        if elem.tag.group == 0x7FE0 or elem.tag.is_private:
            continue
        ds.add(copy.deepcopy(elem))
    if hasattr(source, "file_meta"):
        ds.file_meta = copy.deepcopy(source.file_meta)
    _clean_dataset(ds)
    if str(ds.get("PatientSex", "") or "").upper() not in _SEX:
        ds.PatientSex = ""
    for keyword in ("PatientBirthDate", "StudyDate", "SeriesDate", "ContentDate"):
        if keyword in ds and not _DA_RE.match(str(ds.get(keyword) or "")):
            setattr(ds, keyword, "")
    for keyword in ("StudyTime", "SeriesTime", "ContentTime"):
        if keyword in ds and not _TM_RE.match(str(ds.get(keyword) or "")):
            setattr(ds, keyword, "")
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def sanitise_headers(sources: Iterable[Dataset]) -> list[Dataset]:
    return [sanitise_header(ds) for ds in sources]
