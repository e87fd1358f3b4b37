"""Record received instances in the database; a new study's first instance is audited in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Select, Table, bindparam, func, insert, literal, select, update
from sqlalchemy.orm import Session

from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record
from dicomnode.db import Prepared, utcnow
from dicomnode.errors import UidCollision
from dicomnode.jobs.models import Instance, Series, Study
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
    """What the database already holds under an instance's UIDs: rows from one statement of indexed
    lookups (no ORM objects, no lazy loads: the receiver runs this for every instance)."""

    instance: tuple[Any, ...] | None  # id, sha256, its series UID, its study UID
    series: tuple[Any, ...] | None  # id, revision, routed revision, its study UID
    study: tuple[Any, ...] | None  # id, patient ID


def _find_known() -> Select[Any]:
    """The instance, the series and the study under three UIDs, each with what it belongs to: outer
    joins from one constant row, so that each part is NULL where the database holds nothing."""
    one = select(literal(1).label("one")).subquery("one")
    instance, instance_series, instance_study = _INSTANCE.alias("i"), _SERIES.alias("i_series"), _STUDY.alias("i_study")
    series, series_study, study = _SERIES.alias("s"), _STUDY.alias("s_study"), _STUDY.alias("st")
    return (select(instance.c.id, instance.c.sha256, instance_series.c.series_uid, instance_study.c.study_uid,
                   series.c.id, series.c.revision, series.c.routed_revision, series_study.c.study_uid,
                   study.c.id, study.c.patient_id)
            .select_from(one
                         .outerjoin(instance, instance.c.sop_instance_uid == bindparam("b_instance"))
                         .outerjoin(instance_series, instance_series.c.id == instance.c.series_id)
                         .outerjoin(instance_study, instance_study.c.id == instance_series.c.study_id)
                         .outerjoin(series, series.c.series_uid == bindparam("b_series"))
                         .outerjoin(series_study, series_study.c.id == series.c.study_id)
                         .outerjoin(study, study.c.study_uid == bindparam("b_study"))))


# Built and compiled once: per instance, only their parameters change.
_FIND_KNOWN = Prepared(_find_known())
_TOUCH_STUDY = Prepared(update(_STUDY).where(_STUDY.c.id == bindparam("b_id"))
                        .values(last_received_at=bindparam("b_at"), state=StudyState.RECEIVING,
                                state_reason="receiving: complete after study_idle_seconds without a new instance"))
_INSTANCE_VALUES = ("sop_instance_uid", "series_id", "sop_class_uid", "transfer_syntax_uid", "path", "size",
                    "sha256", "calling_ae", "received_at")
_INSERT_INSTANCE = Prepared(insert(_INSTANCE), _INSTANCE_VALUES)


def lookup(session: Session, meta: InstanceMeta, conn: Connection | None = None) -> Known:
    """``conn``: the session's connection, where the caller holds it already (asking costs each time)."""
    conn = conn or session.connection()  # the session's transaction, on its DB-API cursor
    cursor = _FIND_KNOWN.run(conn, {"b_instance": meta.sop_instance_uid, "b_series": meta.series_uid,
                                    "b_study": meta.study_uid})
    try:
        row = cursor.fetchone()
    finally:
        cursor.close()
    assert row is not None  # the constant row: always one
    return Known(instance=None if row[0] is None else tuple(row[0:4]),
                 series=None if row[4] is None else tuple(row[4:8]),
                 study=None if row[8] is None else tuple(row[8:10]))


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
    conn = session.connection()  # the transaction's, for the Core statements below
    known = lookup(session, meta, conn)
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
        _TOUCH_STUDY.run(conn, {"b_id": study_id, "b_at": now}).close()

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
        _INSERT_INSTANCE.run(conn, {"sop_instance_uid": meta.sop_instance_uid, "series_id": series_id,
                                    **values}).close()
    else:
        session.execute(update(instance_table).where(instance_table.c.id == known.instance[0]).values(**values))
    return True
