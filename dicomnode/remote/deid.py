"""De-identification before a series leaves the edge, and re-identification of the results that come back.

De-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile as dicognito
implements it (``dicognito.anonymizer.Anonymizer``, default options, a random per-job ``seed``):
person names replaced, IDs (Patient ID, Accession Number, Study ID, ...) replaced, dates and times
shifted back by one offset between 62 and 730 days, every instance UID replaced by a keyed hash
(class and transfer syntax UIDs kept), identifying patient attributes removed, DeidentificationMethod
and PatientIdentityRemoved set. Then private tags are removed (pydicom's ``remove_private_tags``), as
the Basic profile asks and dicognito does not. Pixel data and geometry are kept: the model needs them.

Re-identification maps every UID the edge replaced back to its original (through the UID map kept in the
database), and restores the patient and study modules from the original series' header, so that the
results reference the original source instances and land in the original study.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset

# restored from the original header into each result (PS3.3 C.7.1.1 Patient, C.7.2.1 General Study)
RESTORED = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID",
    "StudyDescription",
)
REMOVED_FROM_RESULTS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence")


def _uid_paths(ds: Dataset, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path, value) of every instance UID in ``ds`` (class and transfer syntax UIDs left out)."""
    for elem in ds:
        path = (*prefix, int(elem.tag))
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                yield from _uid_paths(item, (*path, index))
        elif elem.VR == "UI" and elem.value and not (elem.keyword.endswith("ClassUID")
                                                     or elem.keyword == "TransferSyntaxUID"):
            values = elem.value if isinstance(elem.value, list) or type(elem.value).__name__ == "MultiValue" \
                else [elem.value]
            for n, value in enumerate(values):
                yield (*path, n), str(value)


def deidentify(datasets: list[Dataset], seed: str) -> tuple[list[Dataset], dict[str, str]]:
    """De-identified copies of ``datasets`` (module docstring) and the UID map original -> replacement.

    The same ``seed`` gives the same replacements, so that a retry sends the same UIDs.
    """
    anonymizer = Anonymizer(seed=seed)
    copies: list[Dataset] = []
    uid_map: dict[str, str] = {}
    for ds in datasets:
        before = dict(_uid_paths(ds)) | {("meta", *k): v for k, v in _uid_paths(ds.file_meta)}
        clone = copy.deepcopy(ds)
        anonymizer.anonymize(clone)
        clone.remove_private_tags()
        after = dict(_uid_paths(clone)) | {("meta", *k): v for k, v in _uid_paths(clone.file_meta)}
        for path, original in before.items():
            if path in after and after[path] != original:
                uid_map[original] = after[path]
        copies.append(clone)
    return copies, uid_map


def _map_uids(ds: Dataset, reverse: Mapping[str, str]) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _map_uids(item, reverse)
        elif elem.VR == "UI" and elem.value:
            if isinstance(elem.value, str):
                elem.value = reverse.get(elem.value, elem.value)
            else:
                elem.value = [reverse.get(str(v), str(v)) for v in elem.value]


def reidentify(result: Dataset, uid_map: Mapping[str, str], original: Dataset) -> Dataset:
    """A copy of ``result`` with the edge's replaced UIDs mapped back and the original patient and study
    modules restored from ``original`` (a header of the source series)."""
    reverse = {deid: orig for orig, deid in uid_map.items()}
    ds = copy.deepcopy(result)
    _map_uids(ds, reverse)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _map_uids(meta, reverse)
    for keyword in RESTORED:
        if keyword in original:
            setattr(ds, keyword, original[keyword].value)
        elif keyword in ds:
            delattr(ds, keyword)
    for keyword in REMOVED_FROM_RESULTS:
        if keyword in ds:
            delattr(ds, keyword)
    return ds
