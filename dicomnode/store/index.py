"""Record received instances in the database; a new study's first instance is audited in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record
from dicomnode.errors import UidCollision
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
    patient_name: str


def sop_class_counts(session: Session, study_id: int) -> dict[str, int]:
    """Instances per SOP Class UID held for a study (for the DICOM audit messages' study object)."""
    rows = session.execute(select(Instance.sop_class_uid, func.count()).join(Instance.series)
                           .where(Series.study_id == study_id).group_by(Instance.sop_class_uid)).all()
    return {uid: int(count) for uid, count in rows}


@dataclass
class Known:
    """What the database already holds under an instance's UIDs: three indexed lookups, no lazy loads."""

    instance: Instance | None
    series: Series | None
    study: Study | None


def lookup(session: Session, meta: InstanceMeta) -> Known:
    instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == meta.sop_instance_uid)
                              .options(joinedload(Instance.series).joinedload(Series.study)))
    series = session.scalar(select(Series).where(Series.series_uid == meta.series_uid)
                            .options(joinedload(Series.study)))
    study = session.scalar(select(Study).where(Study.study_uid == meta.study_uid))
    return Known(instance, series, study)


def find_collision(session: Session, meta: InstanceMeta, known: Known | None = None) -> str:
    """Why ``meta`` must not be merged into what the database holds, or "" when it may.

    A SOP Instance UID belongs to one series, a series to one study, a study to one patient: an instance
    that contradicts any of these (a UID collision after a PACS migration, a broken modality) would mix
    two studies or two patients' images. The reason names the kind of collision, never a UID.
    """
    known = known or lookup(session, meta)
    if known.instance is not None:
        if known.instance.series.study.study_uid != meta.study_uid:
            return "UID collision: the SOP Instance UID already belongs to another study"
        if known.instance.series.series_uid != meta.series_uid:
            return "UID collision: the SOP Instance UID already belongs to another series"
    if known.series is not None and known.series.study.study_uid != meta.study_uid:
        return "UID collision: the Series Instance UID already belongs to another study"
    if known.study is not None and (known.study.patient_id or "") != meta.patient_id:
        return "UID collision: the Study Instance UID already belongs to another patient (Patient ID differs)"
    return ""


def record_instance(
    session: Session, meta: InstanceMeta, *, path: str, sha256: str, size: int, calling_ae: str,
    calling_address: str = "",
) -> bool:
    """Upsert study and series, insert or refresh the instance; audit the start of a new study's transfer.

    Re-send policy: an instance received again with the same content (SHA-256) changes nothing. A new or
    changed instance reopens its study (RECEIVING), and if its series was already routed, raises the
    series' revision so that routing queues a new result version. Returns whether anything changed.

    The receipt itself is audited once per association and study (``instances_received``, written by the
    receiver when the association ends), not once per instance: the instance row records each receipt
    (calling AE, time, SHA-256) in this transaction.

    Raises
    ------
    UidCollision
        When the instance's UIDs already belong to another study, series or patient
        (:func:`find_collision`); nothing is recorded.
    """
    known = lookup(session, meta)
    collision = find_collision(session, meta, known)
    if collision:
        raise UidCollision(collision)
    now = utcnow()
    instance, series, study = known.instance, known.series, known.study
    if instance is not None and instance.sha256 == sha256:
        return False
    if study is None:
        study = Study(study_uid=meta.study_uid, patient_id=meta.patient_id or None,
                      patient_name=meta.patient_name or None, calling_ae=calling_ae,
                      calling_address=calling_address, first_received_at=now)
        session.add(study)
        session.flush()
        record(session, AuditEvent.BEGIN_TRANSFER_IN, actor=calling_ae, **study.subject(), address=calling_address)
    study.last_received_at = now
    study.state = StudyState.RECEIVING
    study.state_reason = "receiving: complete after study_idle_seconds without a new instance"

    if series is None:
        series = Series(series_uid=meta.series_uid, study=study, modality=meta.modality, revision=1,
                        series_number=meta.series_number, description=meta.series_description[:64])
        session.add(series)
    elif series.routed_revision == series.revision:
        series.revision += 1  # new content after routing: a new result version will supersede the old

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
    return True
