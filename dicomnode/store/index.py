"""Record received instances in the database; a new study's first instance is audited in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

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


_STUDY = cast(Table, Study.__table__)  # Core statements: the receiver's hot path skips the unit of work
_SERIES = cast(Table, Series.__table__)
_INSTANCE = cast(Table, Instance.__table__)


@dataclass(frozen=True)
class Known:
    """What the database already holds under an instance's UIDs: three indexed lookups returning rows
    (no ORM objects, no lazy loads: the receiver runs this for every instance)."""

    instance: tuple[Any, ...] | None  # id, sha256, its series UID, its study UID
    series: tuple[Any, ...] | None  # id, revision, routed revision, its study UID
    study: tuple[Any, ...] | None  # id, patient ID


# Built once: per instance, only their parameters change.
_FIND_INSTANCE = (select(Instance.id, Instance.sha256, Series.series_uid, Study.study_uid)
                  .join(Instance.series).join(Series.study).where(Instance.sop_instance_uid == bindparam("b_uid")))
_FIND_SERIES = (select(Series.id, Series.revision, Series.routed_revision, Study.study_uid)
                .join(Series.study).where(Series.series_uid == bindparam("b_uid")))
_FIND_STUDY = select(Study.id, Study.patient_id).where(Study.study_uid == bindparam("b_uid"))
_TOUCH_STUDY = (update(_STUDY).where(_STUDY.c.id == bindparam("b_id"))
                .values(last_received_at=bindparam("b_at"), state=StudyState.RECEIVING,
                        state_reason="receiving: complete after study_idle_seconds without a new instance"))
_INSERT_INSTANCE = insert(_INSTANCE)


def lookup(session: Session, meta: InstanceMeta) -> Known:
    conn = session.connection()  # Core statements on the session's connection: no ORM execution layer
    instance = conn.execute(_FIND_INSTANCE, {"b_uid": meta.sop_instance_uid}).first()
    series = conn.execute(_FIND_SERIES, {"b_uid": meta.series_uid}).first()
    study = conn.execute(_FIND_STUDY, {"b_uid": meta.study_uid}).first()
    return Known(*(None if row is None else tuple(row) for row in (instance, series, study)))


def find_collision(session: Session, meta: InstanceMeta, known: Known | None = None) -> str:
    """Why ``meta`` must not be merged into what the database holds, or "" when it may.

    A SOP Instance UID belongs to one series, a series to one study, a study to one patient: an instance
    that contradicts any of these (a UID collision after a PACS migration, a broken modality) would mix
    two studies or two patients' images. The reason names the kind of collision, never a UID.
    """
    known = known or lookup(session, meta)
    if known.instance is not None:
        if known.instance[3] != meta.study_uid:
            return "UID collision: the SOP Instance UID already belongs to another study"
        if known.instance[2] != meta.series_uid:
            return "UID collision: the SOP Instance UID already belongs to another series"
    if known.series is not None and known.series[3] != meta.study_uid:
        return "UID collision: the Series Instance UID already belongs to another study"
    if known.study is not None and (known.study[1] or "") != meta.patient_id:
        return "UID collision: the Study Instance UID already belongs to another patient (Patient ID differs)"
    return ""


def record_instance(
    session: Session, meta: InstanceMeta, *, path: str, sha256: str, size: int, calling_ae: str,
    calling_address: str = "", actor: str | None = None,
) -> bool:
    """Upsert study and series, insert or refresh the instance; audit the start of a new study's transfer.

    Re-send policy: an instance received again with the same content (SHA-256) changes nothing. A new or
    changed instance reopens its study (RECEIVING), and if its series was already routed, raises the
    series' revision so that routing queues a new result version. Returns whether anything changed.
    ``actor`` names the sender in the audit rows (default: ``calling_ae``; a STOW-RS user's name).

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
    if known.instance is not None and known.instance[1] == sha256:
        return False
    now = utcnow()
    receiving = {"last_received_at": now, "state": StudyState.RECEIVING,
                 "state_reason": "receiving: complete after study_idle_seconds without a new instance"}
    if known.study is None:
        study = Study(study_uid=meta.study_uid, patient_id=meta.patient_id or None,
                      patient_name=meta.patient_name or None, calling_ae=calling_ae,
                      calling_address=calling_address, first_received_at=now, **receiving)
        session.add(study)
        session.flush()
        record(session, AuditEvent.BEGIN_TRANSFER_IN, actor=calling_ae if actor is None else actor,
               **study.subject(), address=calling_address)
        study_id = study.id
    else:
        study_id = known.study[0]
        session.connection().execute(_TOUCH_STUDY, {"b_id": study_id, "b_at": now})

    series_table = _SERIES
    if known.series is None:
        inserted = cast(CursorResult[Any], session.execute(insert(series_table).values(
            series_uid=meta.series_uid, study_id=study_id, modality=meta.modality, revision=1,
            series_number=meta.series_number, description=meta.series_description[:64])))
        key = inserted.inserted_primary_key
        assert key is not None
        series_id = key[0]
    else:
        series_id, revision, routed_revision = known.series[0], known.series[1], known.series[2]
        if routed_revision == revision:  # new content after routing: a new result version supersedes the old
            session.execute(update(series_table).where(series_table.c.id == series_id).values(revision=revision + 1))

    values = {"sop_class_uid": meta.sop_class_uid, "transfer_syntax_uid": meta.transfer_syntax_uid, "path": path,
              "size": size, "sha256": sha256, "calling_ae": calling_ae, "received_at": now}
    instance_table = _INSTANCE
    if known.instance is None:
        session.connection().execute(_INSERT_INSTANCE, {"sop_instance_uid": meta.sop_instance_uid,
                                                        "series_id": series_id, **values})
    else:
        session.execute(update(instance_table).where(instance_table.c.id == known.instance[0]).values(**values))
    return True
