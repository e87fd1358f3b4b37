"""What every result object shares: equipment, algorithm identification, UID and series-number policy.

UIDs are deterministic: the same job (source series, model, model version) always yields the same
Series and SOP Instance UIDs, so a re-run replaces rather than duplicates on the PACS.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TypedDict

import highdicom as hd
from pydicom.sr.codedict import codes

import dicomnode
from dicomnode.inference.registry import Manifest

MANUFACTURER = "dicomnode"
MANUFACTURER_MODEL_NAME = "dicomnode AI node"
DEVICE_SERIAL_NUMBER = "dicomnode"
NOT_FOR_CLINICAL_USE = "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"


_NAMESPACE = uuid.UUID("6f1b8f0e-3c1e-5a4b-9d7e-2a0d1c0de000")


def deterministic_uid(*parts: str) -> str:
    """A ``2.25.`` UID from a name-based (SHA-1) UUID of ``parts`` (PS3.5 B.2): same parts, same UID.

    (pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources and is random.)
    """
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(31).join(parts)).int}"


@dataclass(frozen=True)
class ResultIdentity:
    """UIDs and numbers of one job's SEG and SR."""

    seg_series_uid: str
    seg_sop_uid: str
    seg_series_number: int
    sr_series_uid: str
    sr_sop_uid: str
    sr_series_number: int
    key: tuple[str, ...] = ()
    base: int = 9000
    source_number: int = 0

    def uid(self, *parts: str) -> str:
        """A further deterministic UID of this job's results (explanation maps, overlays)."""
        return deterministic_uid(*self.key, *parts)

    def series_number(self, offset: int) -> int:
        """``series_number_base + offset + source SeriesNumber % 100`` (SEG 0, SR 100, notice 200, maps 300)."""
        return self.base + offset + self.source_number

    @classmethod
    def for_job(cls, source_series_uid: str, source_series_number: int | None, manifest: Manifest,
                revision: int = 1) -> ResultIdentity:
        """UIDs for the results of ``manifest`` on revision ``revision`` of the source series."""
        key: tuple[str, ...] = (source_series_uid, manifest.id, manifest.version)
        if revision > 1:  # a new version of the result, superseding the one from the earlier content
            key += (f"revision-{revision}",)
        number = (source_series_number or 0) % 100
        return cls(
            seg_series_uid=deterministic_uid(*key, "seg-series"),
            seg_sop_uid=deterministic_uid(*key, "seg-instance"),
            seg_series_number=manifest.series_number_base + number,
            sr_series_uid=deterministic_uid(*key, "sr-series"),
            sr_sop_uid=deterministic_uid(*key, "sr-instance"),
            sr_series_number=manifest.series_number_base + 100 + number,
            key=key,
            base=manifest.series_number_base,
            source_number=number,
        )


def algorithm_identification(manifest: Manifest) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=manifest.name[:64],
        version=manifest.version,
        family=codes.DCM.ArtificialIntelligence,
        source="dicomnode",
        parameters={"intended use": manifest.intended_use},  # e.g. "... not for clinical use"
    )


def software_versions(manifest: Manifest) -> str:
    return f"dicomnode {dicomnode.__version__}; {manifest.id} {manifest.version}"[:64]


class Equipment(TypedDict):
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


def equipment(manifest: Manifest) -> Equipment:
    """General Equipment of every object the node writes (IHE AI Results: manufacturer, model name, software
    versions and serial number in each SEG, SR and SC), as highdicom's constructors take it."""
    return Equipment(manufacturer=MANUFACTURER, manufacturer_model_name=MANUFACTURER_MODEL_NAME,
                     software_versions=software_versions(manifest), device_serial_number=DEVICE_SERIAL_NUMBER)
