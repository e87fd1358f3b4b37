"""Clean copies of source headers, so that what the node writes is valid even when what it read is not.

Real PACS headers are dirty (../shared/data/README.md): PatientSex "0000", NUL-padded strings, absent
Type 2 attributes. highdicom copies the patient and study modules from the source images, so the node
hands it cleaned copies; the files in the spool are never modified.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT", "UI"}
_DA_RE = re.compile(r"^\d{8}$")
_TM_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_SEX = {"M", "F", "O"}
# Type 2 attributes of the Patient and General Study modules that highdicom copies from the source
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "AccessionNumber")


# PS3.5 Table 6.2-1 maximum lengths (characters) of the text VRs the node may copy
_MAX_LENGTH = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240,
               "PN": 64, "SH": 16, "ST": 1024, "TM": 14, "UI": 64}


def _clean_text(value: object, vr: str) -> object:
    limit = _MAX_LENGTH.get(vr)
    if isinstance(value, str):
        text = value.replace("\x00", "").strip()
        if vr == "PN" and text and "^" not in text and "=" not in text:
            text += "^"  # a family name alone, said explicitly (PS3.5 6.2.1.2)
        return text[:limit] if limit and vr != "UI" else text
    if isinstance(value, PersonName):
        return _clean_text(str(value), vr)
    if isinstance(value, bytes):
        return value.replace(b"\x00", b"").strip()
    return value


def _cleaned(elem: DataElement) -> DataElement | None:
    """A cleaned copy of ``elem``, or None when it needs none (sequences are cleaned in place)."""
    if elem.VR == "SQ":
        for item in elem.value:
            _clean_dataset(item)
        return None
    if elem.VR not in _TEXT_VRS or elem.value is None:
        return None
    if elem.VM > 1:
        value: object = [_clean_text(v, elem.VR) for v in elem.value]
    else:
        value = _clean_text(elem.value, elem.VR)
    if value == elem.value:
        return None  # already clean (most are): no new element to build and convert
    # validation off for this element only: the point is to repair what was received
    return DataElement(elem.tag, elem.VR, value, validation_mode=config.IGNORE)


def _clean_dataset(ds: Dataset) -> None:
    for elem in list(ds):
        cleaned = _cleaned(elem)
        if cleaned is not None:
            ds[elem.tag] = cleaned


def sanitise_header(source: Dataset) -> Dataset:
    """A cleaned deep copy of ``source`` without pixel data.

    NULs are removed from strings, PatientSex outside M/F/O, and dates and times that are not
    well-formed, become empty, and absent Type 2 patient/study attributes are added empty.
    """
    ds = Dataset()
    for elem in source:
        if elem.tag.group == 0x7FE0 or elem.tag.is_private:
            continue
        # Cleaning replaces elements and never changes a value in place, except inside sequences: only
        # those need a deep copy (deep-copying every element took a second for a 189-slice series).
        ds.add(copy.deepcopy(elem) if elem.VR == "SQ" else copy.copy(elem))
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


# What highdicom reads from every source image after the first (the first gives the patient, study and
# equipment modules): the uniqueness check (study, series, size, frame of reference), the shared
# orientation, each plane's position, and the SOP class and instance referenced by each frame and by the
# SR's evidence. Copying and cleaning only these took 0.05 s instead of 0.4 s for a 189-slice series.
REFERENCE_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                      "FrameOfReferenceUID", "Rows", "Columns", "NumberOfFrames", "ImageOrientationPatient",
                      "ImagePositionPatient", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices")
_REFERENCE_TAGS = tuple(Tag(keyword) for keyword in REFERENCE_KEYWORDS)


def reference_header(source: Dataset) -> Dataset:
    """A cleaned copy of only the attributes of ``source`` that a result references (REFERENCE_KEYWORDS)."""
    ds = Dataset()
    for tag in _REFERENCE_TAGS:
        if tag in source:
            elem = source[tag]
            ds.add(_cleaned(elem) or copy.copy(elem))
    return ds


def sanitise_headers(sources: Iterable[Dataset]) -> list[Dataset]:
    """The first source sanitised whole (:func:`sanitise_header`), the others as :func:`reference_header`.

    highdicom takes the patient, study and equipment modules of a result from its first source only.
    """
    out: list[Dataset] = []
    for ds in sources:
        out.append(reference_header(ds) if out else sanitise_header(ds))
    return out
