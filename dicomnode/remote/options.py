"""The PS3.15 Annex E options a remote model may ask for (its manifest's ``[remote] deid_options``).

Each option changes the Basic profile's action for the attributes of its column of Table E.1-1 and is
recorded in the De-identification Method Code Sequence with its PS3.16 CID 7050 code:

- ``retain-longitudinal-temporal-modified-dates`` (113107, PS3.15 E.3.6): every date (DA) and date-time
  (DT) of the table is shifted back by one offset per job, a whole number of days between 366 and 3652,
  so that intervals are kept and no original date, nor its year, survives; times of day (TM) are kept,
  which a shift by whole days leaves as they are. The birth date and the GPS time stamp are not in the
  option's column and keep the Basic action. (0028,0303) Longitudinal Temporal Information Modified is
  MODIFIED.
- ``retain-patient-characteristics`` (113108, E.3.7): the column's K attributes are kept (age, sex, size,
  weight, ...); its C attributes (allergies, pre-medication, special needs, patient state) keep the Basic
  action, removal.
- ``clean-descriptors`` (113105, E.3.5): the descriptions a model or a rule reads (:data:`CLEANED`) are
  cleaned instead of removed: every word that occurs in an identifying attribute of the same instance
  (names, IDs, addresses, institution, dates, ...) is dropped, in any case, and so is every date-like
  text and every word with four digits or more; an empty result is removed. The option's other
  descriptors keep the Basic action, removal. A name that the instance does not carry anywhere else
  cannot be recognised: use the option only where descriptions follow the site's protocol vocabulary.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

MODIFIED_DATES = "retain-longitudinal-temporal-modified-dates"
PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
CLEAN_DESCRIPTORS = "clean-descriptors"

CODES: dict[str, Code] = {  # PS3.16 CID 7050 De-identification Method
    MODIFIED_DATES: codes.cid7050.RetainLongitudinalTemporalInformationModifiedDatesOption,
    PATIENT_CHARACTERISTICS: codes.cid7050.RetainPatientCharacteristicsOption,
    CLEAN_DESCRIPTORS: codes.cid7050.CleanDescriptorsOption,
}

# dates of the table outside the Modified Dates column (Table E.1-1): the Basic action stays
NOT_SHIFTED = frozenset({0x00100030, 0x00160077})  # Patient's Birth Date, GPS Time Stamp
# Table E.1-1, Retain Patient Characteristics column, the K rows
PATIENT_KEPT = ("PatientAge", "PatientSex", "PatientSexNeutered", "PatientSize", "PatientWeight", "EthnicGroup",
                "PregnancyStatus", "SmokingStatus", "SelectorASValue")
# descriptions of the Clean Descriptors column that are cleaned, not removed
CLEANED = ("StudyDescription", "SeriesDescription", "ProtocolName", "PerformedProcedureStepDescription",
           "RequestedProcedureDescription", "ImageComments", "DerivationDescription")

_DATE_LIKE = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}")
_WORD = re.compile(r"[^\W_]+")
_LONG_NUMBER = re.compile(r"\d{4}")


def check(options: Iterable[str]) -> tuple[str, ...]:
    """The options in a stable order; ValueError naming an unknown one."""
    chosen = tuple(dict.fromkeys(options))
    unknown = [o for o in chosen if o not in CODES]
    if unknown:
        raise ValueError(f"deid_options: unknown option(s) {', '.join(unknown)}; known: {', '.join(CODES)}")
    return tuple(o for o in CODES if o in chosen)


def shift_days(seed: str) -> int:
    """The job's date offset in days (366-3652): the same seed, the same offset."""
    return 366 + int(hashlib.sha256(f"dates/{seed}".encode()).hexdigest(), 16) % 3287


def shift_value(value: str, vr: str, days: int) -> str | None:
    """A DA or DT value moved back by ``days``; None when it is not a full date (then it is removed)."""
    text = value.strip()
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None
    if vr == "DA" and len(text) != 8:
        return None
    return (day - dt.timedelta(days=days)).strftime("%Y%m%d") + text[8:]


def words(values: Iterable[str]) -> set[str]:
    """Identifying values, whole and word by word (two characters or more), case-folded."""
    found: set[str] = set()
    for value in values:
        found |= {w.casefold() for w in (value.strip(), *_WORD.findall(value)) if len(w) >= 2}
    return found


def clean_text(text: str, identifying: set[str]) -> str:
    """``text`` without any value or word of ``identifying`` (longest first, in any case), date-like text
    and words with four digits or more."""
    for value in sorted(identifying, key=len, reverse=True):
        text = re.sub(re.escape(value), " ", text, flags=re.IGNORECASE)
    kept = [w for w in _WORD.findall(_DATE_LIKE.sub(" ", text))
            if w.casefold() not in identifying and not _LONG_NUMBER.search(w)]
    return " ".join(kept)


def identifying_values(ds: Dataset, table: set[int], skip: set[int]) -> Iterable[str]:
    """Every text value of a Table E.1-1 attribute in ``ds`` (nested too), but those in ``skip``."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from identifying_values(item, table, skip)
        elif int(elem.tag) in table and int(elem.tag) not in skip and elem.VR not in ("UI", "OB", "OW", "UN"):
            values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
            yield from (str(v) for v in values if v not in (None, ""))
