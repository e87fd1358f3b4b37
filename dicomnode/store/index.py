"""Record received instances in the database, in the same transaction as their audit row."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record
from dicomnode.jobs.models import Instance, Series, Study, utcnow
from dicomnode.jobs.status import StudyState


@dataclass(frozen=True)
class InstanceMeta:
    """What the node keeps of a received instance's header (UIDs already validated)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    series_number: int | None
    series_description: str
    patient_id: str


def record_instance(
    session: Session, meta: InstanceMeta, *, path: str, sha256: str, size: int, calling_ae: str
) -> Instance:
    """Upsert study and series, insert or refresh the instance, and audit the receipt.

    A study that was already complete goes back to RECEIVING, so that its completeness is judged again.
    """
    now = utcnow()
    study = session.scalar(select(Study).where(Study.study_uid == meta.study_uid))
    if study is None:
        study = Study(study_uid=meta.study_uid, patient_id=meta.patient_id or None, calling_ae=calling_ae,
                      first_received_at=now)
        session.add(study)
    study.last_received_at = now
    study.state = StudyState.RECEIVING
    study.state_reason = "receiving: complete after study_idle_seconds without a new instance"

    series = session.scalar(select(Series).where(Series.series_uid == meta.series_uid))
    if series is None:
        series = Series(series_uid=meta.series_uid, study=study, modality=meta.modality,
                        series_number=meta.series_number, description=meta.series_description[:64])
        session.add(series)

    instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == meta.sop_instance_uid))
    if instance is None:
        instance = Instance(sop_instance_uid=meta.sop_instance_uid, series=series)
        session.add(instance)
    instance.sop_class_uid = meta.sop_class_uid
    instance.transfer_syntax_uid = meta.transfer_syntax_uid
    instance.path = path
    instance.size = size
    instance.sha256 = sha256
    instance.calling_ae = calling_ae
    instance.received_at = now
    record(session, AuditEvent.INSTANCE_RECEIVED, actor=calling_ae, study_uid=meta.study_uid,
           patient_id=meta.patient_id or None, sop_instance_uid=meta.sop_instance_uid,
           sop_class_uid=meta.sop_class_uid, size=size)
    return instance
