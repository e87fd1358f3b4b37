"""Receipts counted per association and study, for one audit row each when the association ends.

The audit rules allow one "DICOM Instances Transferred" per study and association: the trail gets one
``instances_received`` row per (association, study) with the instance count, the re-sends that changed
nothing and the SOP classes, instead of a row per instance. Each instance's own row in the database
(calling AE, time, SHA-256) is committed before its 0x0000, and refusals stay audited one by one.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dicomnode.store.index import InstanceMeta


@dataclass
class StudyReceipts:
    """What one association delivered of one study."""

    study_uid: str
    patient_id: str
    patient_name: str
    calling_ae: str
    address: str
    instances: int = 0
    unchanged: int = 0
    sop_classes: Counter[str] = field(default_factory=Counter)


class Tally:
    """Thread-safe counts keyed by association; :meth:`close` hands an association's counts over once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, StudyReceipts]] = {}

    def add(self, assoc: Any, meta: InstanceMeta, calling_ae: str, address: str, *, changed: bool) -> None:
        with self._lock:
            studies = self._counts.setdefault(id(assoc), {})
            receipts = studies.get(meta.study_uid)
            if receipts is None:
                receipts = studies[meta.study_uid] = StudyReceipts(
                    meta.study_uid, meta.patient_id, meta.patient_name, calling_ae, address)
            receipts.instances += 1
            receipts.unchanged += 0 if changed else 1
            receipts.sop_classes[meta.sop_class_uid] += 1

    def close(self, assoc: Any) -> list[StudyReceipts]:
        with self._lock:
            return list(self._counts.pop(id(assoc), {}).values())
