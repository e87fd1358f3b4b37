"""Codes the result objects share: the procedure reported (CID 100) and the qualitative answers."""

from __future__ import annotations

from pydicom.sr.coding import Code

# TID 1500 row 4 "Procedure reported", from CID 100 (Quantitative Diagnostic Imaging Procedures)
PROCEDURES = {
    "CT": Code("25045-6", "LN", "CT unspecified body region"),
    "MR": Code("25056-3", "LN", "MRI unspecified body region"),
    "PT": Code("44136-0", "LN", "PET unspecified body region"),
    "NM": Code("49118-3", "LN", "NM unspecified body region"),
    "DX": Code("43468-8", "LN", "XR unspecified body region"),
    "CR": Code("43468-8", "LN", "XR unspecified body region"),
}
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
PRESENT = Code("52101004", "SCT", "Present")  # CID 240
ABSENT = Code("272519000", "SCT", "Absent")
PROBABILITY = Code("122157", "DCM", "Probability")
NO_UNITS = Code("1", "UCUM", "no units")


def procedure_reported(modality: str) -> Code:
    """The CID 100 code for an imaging procedure of ``modality`` (generic when none fits)."""
    return PROCEDURES.get(modality.upper(), IMAGING_PROCEDURE)
