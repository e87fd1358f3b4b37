"""Codes of the classification report: the qualitative answers and the probability."""

from __future__ import annotations

from pydicom.sr.coding import Code

PRESENT = Code("52101004", "SCT", "Present")  # CID 240
ABSENT = Code("272519000", "SCT", "Absent")
PROBABILITY = Code("122157", "DCM", "Probability")
NO_UNITS = Code("1", "UCUM", "no units")
COMMENT = Code("121106", "DCM", "Comment")  # the label OHIF shows for a TID 1500 measurement group
