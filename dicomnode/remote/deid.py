"""De-identification before a series leaves the edge, and re-identification of the results that come back.

What leaves is de-identified to PS3.15 Annex E, Table E.1-1, the Basic Application Level Confidentiality
Profile, every attribute's action as the table gives it (X, Z, D, U and X/Z, X/D, Z/D, X/Z/D, X/Z/U*),
plus the options the remote model names (:mod:`dicomnode.remote.options`). Pixel data and geometry are
not in the table and are kept: the model needs them.

The table comes from **dicom-anonymizer** (Kitware, ``dicomanonymizer``): its ``dicomfields_2026c``
module is Table E.1-1 of DICOM 2026c, generated from the standard, one list per action, and
``initialize_actions`` maps each list to its action. It was chosen over dicognito (used before) and deid
by applying each to a dataset that carries every attribute of the table that pydicom knows (619 of the
621 rows of 2024b, each with a value containing a name) and comparing with the table: dicom-anonymizer
2.1.0 applies the table's action to 585 and leaves no original value; dicognito 0.19 (its own list, not
the table) to 166 and leaves 290 (Study and Series Description among them); deid 0.4.13's default
recipe to 192, leaves 269 and removes every UID. The library resolves X/Z, X/D and X/Z/D to Z or D, the
table's alternatives that keep an IOD valid.

Where the library falls short of the table, a small supplement (:meth:`_Run.supplement`) takes over:

1. X on a date (DA): the library writes 00010101 instead of removing it (34 attributes); removed here.
2. U: the library draws random UIDs into a process-wide map; here each UID is replaced by a keyed hash
   of the job's seed (``2.25.`` and a name-based UUID), so that a retry sends the same UIDs, and the map
   original -> replacement is kept for re-identification.
3. X/Z/U*: the library empties every value in the sequence's items (Type 1 UIDs left empty); here the
   items are kept and de-identified like any other item, their instance UIDs replaced (the U* choice).
4. Nesting: the library applies the table at the top level only; here it is applied to every item of
   every sequence that is kept, at any depth.

Then Patient Identity Removed (0012,0062) is YES, De-identification Method (0012,0063) names the
profile, the library and the options, the De-identification Method Code Sequence (0012,0064) carries the
CID 7050 codes (113100 and one per option), and Longitudinal Temporal Information Modified (0028,0303)
is REMOVED, or MODIFIED under the modified-dates option. Private tags are removed (X).

Re-identification maps every UID the edge replaced back to its original (through the UID map kept in the
database), and restores the patient and study modules from the original series' header, so that the
results reference the original source instances and land in the original study.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, initialize_actions
from highdicom.sr import CodedConcept
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes

from dicomnode.remote import options as opt

TABLE = "dicomfields_2026c"  # dicom-anonymizer's copy of PS3.15 Table E.1-1, DICOM 2026c
PROFILE = codes.cid7050.BasicApplicationConfidentialityProfile  # 113100

# restored from the original header into each result (PS3.3 C.7.1.1 Patient, C.7.2.1 General Study)
RESTORED = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID",
    "StudyDescription",
)
REMOVED_FROM_RESULTS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                        "LongitudinalTemporalInformationModified")

Tag = tuple[int, int]
Action = Callable[[Dataset, Tag], None]


@functools.cache
def table() -> dict[str, list[tuple[int, ...]]]:
    """Table E.1-1 as dicom-anonymizer ships it: action name (``"X_TAGS"``, ...) -> tags, a repeating
    group as (group, element, group mask, element mask)."""
    selected: dict[str, list[tuple[int, ...]]] = dicom_anonymization_database_selector(TABLE)
    return selected


def tags(action: str) -> list[Tag]:
    """The single tags (no repeating group) of one action of the table, ``"ALL_TAGS"`` for all."""
    return [(t[0], t[1]) for t in table()[action] if len(t) == 2]


def _vr(tag: Tag) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:  # newer than this pydicom: the library's action stands
        return ""


def _remove(ds: Dataset, tag: Tag) -> None:
    if tag in ds:
        del ds[tag]


def _keep(ds: Dataset, tag: Tag) -> None:
    """K, or a sequence whose items are de-identified one by one (the nesting step)."""


def _values(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]


@dataclass
class _Run:
    """One call of :func:`deidentify`: the seed, the options, and the UID map it fills."""

    seed: str
    options: tuple[str, ...]
    uid_map: dict[str, str] = field(default_factory=dict)
    identifying: set[str] = field(default_factory=set)

    def new_uid(self, uid: str) -> str:
        if uid not in self.uid_map:
            self.uid_map[uid] = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{self.seed}/{uid}').int}"
        return self.uid_map[uid]

    def replace_uids(self, ds: Dataset, tag: Tag) -> None:
        """U, keyed by the seed (supplement 2)."""
        elem = ds.get(tag)
        if elem is None or not elem.value:
            return
        if elem.VR != "UI":
            del ds[tag]
            return
        new = [self.new_uid(v) for v in _values(elem.value)]
        elem.value = new if len(new) > 1 else new[0]

    def shift_dates(self, ds: Dataset, tag: Tag) -> None:
        """C under the modified-dates option: back by the job's offset; a value that is no date is removed."""
        elem = ds.get(tag)
        if elem is None or not elem.value:
            return
        shifted = [opt.shift_value(v, elem.VR, opt.shift_days(self.seed)) for v in _values(elem.value)]
        if any(s is None for s in shifted):
            del ds[tag]
        else:
            elem.value = shifted if len(shifted) > 1 else shifted[0]

    def clean(self, ds: Dataset, tag: Tag) -> None:
        """C under the clean-descriptors option (:func:`dicomnode.remote.options.clean_text`)."""
        elem = ds.get(tag)
        if elem is None:
            return
        cleaned = [opt.clean_text(v, self.identifying) for v in _values(elem.value or "")]
        if not any(cleaned):
            del ds[tag]
        else:
            elem.value = cleaned if len(cleaned) > 1 else cleaned[0]

    def supplement(self) -> dict[Tag, Action]:
        """The rules that replace the library's for the table (module docstring) and for the options."""
        rules: dict[Tag, Action] = {tag: _remove for tag in tags("X_TAGS") if _vr(tag) == "DA"}  # 1
        rules |= {tag: self.replace_uids for tag in tags("U_TAGS")}  # 2
        rules |= {tag: _keep for tag in tags("X_Z_U_STAR_TAGS")}  # 3
        if opt.MODIFIED_DATES in self.options:
            rules |= {tag: self.shift_dates for tag in tags("ALL_TAGS")
                      if _vr(tag) in ("DA", "DT") and (tag[0] << 16 | tag[1]) not in opt.NOT_SHIFTED}
        if opt.PATIENT_CHARACTERISTICS in self.options:
            rules |= {_tag(keyword): _keep for keyword in opt.PATIENT_KEPT}
        if opt.CLEAN_DESCRIPTORS in self.options:
            rules |= {_tag(keyword): self.clean for keyword in opt.CLEANED}
        return rules

    def apply(self, ds: Dataset, rules: dict[Tag, Action]) -> None:
        """The table and the supplement on ``ds``, then on every item of every sequence left (supplement 4)."""
        anonymize_dataset(ds, rules, delete_private_tags=True,
                          base_rules_gen=functools.partial(initialize_actions, TABLE))
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value:
                    self.apply(item, rules)

    def mark(self, ds: Dataset) -> None:
        """Patient Identity Removed, the method and its CID 7050 codes (PS3.3 C.12.1, PS3.15 E.1.1)."""
        version = importlib.metadata.version("dicom-anonymizer")
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = ["PS3.15 E.1-1 Basic Application Level Confidentiality",
                                     f"dicom-anonymizer {version} {TABLE}", *self.options]
        ds.DeidentificationMethodCodeSequence = [
            CodedConcept(code.value, code.scheme_designator, code.meaning)
            for code in (PROFILE, *(opt.CODES[o] for o in self.options))]
        ds.LongitudinalTemporalInformationModified = \
            "MODIFIED" if opt.MODIFIED_DATES in self.options else "REMOVED"


def _tag(keyword: str) -> Tag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword} is no DICOM keyword that this pydicom knows")
    return (tag >> 16, tag & 0xFFFF)


def deidentify(datasets: Sequence[Dataset], seed: str, options: Sequence[str] = ()
               ) -> tuple[list[Dataset], dict[str, str]]:
    """De-identified copies of ``datasets`` (module docstring) and the UID map original -> replacement.

    Parameters
    ----------
    datasets
        The series' instances; left unchanged.
    seed
        The job's secret: the same seed gives the same UIDs and the same date offset, so that a retry
        sends the same study.
    options
        Annex E options by name (:data:`dicomnode.remote.options.CODES`); none: the Basic profile only.

    Raises
    ------
    ValueError
        For an unknown option.
    """
    run = _Run(seed, opt.check(options))
    rules = run.supplement()
    table_tags = {t[0] << 16 | t[1] for t in tags("ALL_TAGS")}
    cleaned = {int(tag_for_keyword(k) or 0) for k in opt.CLEANED}
    copies: list[Dataset] = []
    for ds in datasets:
        clone = copy.deepcopy(ds)
        run.identifying = opt.words(opt.identifying_values(clone, table_tags, cleaned))
        run.apply(clone, rules)
        run.mark(clone)
        copies.append(clone)
    return copies, dict(run.uid_map)


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
