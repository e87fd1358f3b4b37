"""The failure notice: a small SR in the study saying that the AI result will not come, and why.

So that the radiologist is not left waiting for a result that will never arrive. Built only with
highdicom; its UIDs are deterministic like every other result's. The series description, which every
worklist and viewer shows (OHIF lists it under the study even though it draws only TID 1500 reports), carries
the reason too: "AI result not available (deepbet): model output was empty".
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code

from dicomnode.errors import BuildError
from dicomnode.inference.registry import Manifest
from dicomnode.results.equipment import deterministic_uid, equipment

REPORT_TITLE = Code("18748-4", "LN", "Diagnostic Imaging Report")
FINDING = Code("121071", "DCM", "Finding")
NOTICE_SERIES_NUMBER_OFFSET = 200  # SEG at base + n, SR at base + 100 + n, notice at base + 200 + n


def notice_text(manifest: Manifest, reason: str) -> str:
    return (f"AI result not available ({manifest.name} {manifest.version}): {reason}. "
            f"Intended use: {manifest.intended_use}")[:1024]


def notice_description(manifest: Manifest, reason: str) -> str:
    """The notice's series description (LO, 64 characters): the model and as much of the reason as fits."""
    return " ".join(f"AI result not available ({manifest.id}): {reason}".split())[:64]


def build_failure_notice(
    sources: Sequence[Dataset], manifest: Manifest, reason: str, source_series_number: int | None, revision: int
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR in the source study with one TEXT finding: "AI result not available: <reason>"."""
    key = (str(sources[0].SeriesInstanceUID), manifest.id, manifest.version, f"revision-{revision}", "notice")
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE)
    root.ContentSequence = DicomSequence([hd.sr.TextContentItem(name=FINDING, value=notice_text(manifest, reason),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)])
    try:
        return hd.sr.ComprehensiveSR(
            evidence=list(sources),
            content=root,
            series_instance_uid=deterministic_uid(*key, "series"),
            series_number=manifest.series_number_base + NOTICE_SERIES_NUMBER_OFFSET + (source_series_number or 0) % 100,
            sop_instance_uid=deterministic_uid(*key, "instance"),
            instance_number=1,
            is_complete=True,
            series_description=notice_description(manifest, reason),
            **equipment(manifest),
        )
    except (ValueError, AttributeError, TypeError) as exc:
        raise BuildError(f"failure notice could not be built: {exc}") from exc
