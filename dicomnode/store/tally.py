"""Receipts counted per association (C-STORE) or request (STOW-RS) and study, for one audit row each when
the association or request ends.

The audit rules allow one "DICOM Instances Transferred" per study and association: the trail gets one
``instances_received`` row per (association or request, study) with the instance count, the re-sends
that changed nothing and the SOP classes, instead of a row per instance. Each instance's own row in the
database (calling AE, time, SHA-256) is committed before its 0x0000; refusals are audited per burst
(:mod:`dicomnode.store.landing`).
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
    transport: str
    instances: int = 0
    unchanged: int = 0
    sop_classes: Counter[str] = field(default_factory=Counter)


class Tally:
    """Thread-safe counts keyed by association or request (any object, by identity); :meth:`close` hands
    its counts over once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, StudyReceipts]] = {}

    def add(self, key: Any, meta: InstanceMeta, calling_ae: str, address: str, transport: str, *,
            changed: bool) -> None:
        with self._lock:
            studies = self._counts.setdefault(id(key), {})
            receipts = studies.get(meta.study_uid)
            if receipts is None:
                receipts = studies[meta.study_uid] = StudyReceipts(
                    meta.study_uid, meta.patient_id, meta.patient_name, calling_ae, address, transport)
            receipts.instances += 1
            receipts.unchanged += 0 if changed else 1
            receipts.sop_classes[meta.sop_class_uid] += 1

    def close(self, key: Any) -> list[StudyReceipts]:
        with self._lock:
            return list(self._counts.pop(id(key), {}).values())
