"""ORM models of the node's state (SQLAlchemy 2.0): studies, jobs, deliveries, configuration, evaluation.

State lives here, never in folders or lock files. The audit trail's own tables are :mod:`dicomnode.audit.models`;
both share :class:`dicomnode.db.Base`.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

import dicomnode.audit.models  # noqa: F401 (the audit tables share Base.metadata: importing the job tables brings the whole schema)
from dicomnode.audit.events import Subject
from dicomnode.db import Base, utcnow
from dicomnode.jobs.status import JobStatus, StudyState


def _enum(cls: type, name: str) -> Enum:
    # Stored as text with a CHECK constraint: the same on SQLite and PostgreSQL.
    return Enum(
        cls, name=name, native_enum=False, create_constraint=True, length=16,
        values_callable=lambda e: [m.value for m in e],
    )


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    state: Mapped[StudyState] = mapped_column(_enum(StudyState, "study_state"), default=StudyState.RECEIVING)
    state_reason: Mapped[str] = mapped_column(Text, default="")
    calling_ae: Mapped[str] = mapped_column(String(16))
    calling_address: Mapped[str] = mapped_column(String(64), default="")
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    completed_at: Mapped[dt.datetime | None]
    # what a query peer answered about this study (dicomnode.query.counts): its instance count (None: not
    # asked or no answer), when it was asked, and why there is no count (refused, timed out)
    pacs_instances: Mapped[int | None]
    pacs_asked_at: Mapped[dt.datetime | None]
    pacs_note: Mapped[str] = mapped_column(Text, default="", server_default="")

    series: Mapped[list[Series]] = relationship(back_populates="study")

    def subject(self) -> Subject:
        """Who and what an audit row about this study names."""
        return {"study_uid": self.study_uid, "patient_id": self.patient_id, "patient_name": self.patient_name}


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None]
    description: Mapped[str] = mapped_column(String(64), default="")
    route_reason: Mapped[str] = mapped_column(Text, default="")
    # Content revision: goes up when an instance is added or changed after the series was routed, so
    # that routing queues a new result version that supersedes the old one.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    routed_revision: Mapped[int | None]
    pacs_instances: Mapped[int | None]  # the query peer's NumberOfSeriesRelatedInstances

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), index=True)  # local evaluation finds SEGs and SRs
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("series_id", "model_id", "model_version", "revision", name="uq_job_series_model"),
        Index("ix_job_status_run_after", "status", "run_after"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"))
    rule: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), default=JobStatus.QUEUED)
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None]
    run_after: Mapped[dt.datetime | None]  # a scheduled retry: not claimed before this
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    series: Mapped[Series] = relationship()
    events: Mapped[list[JobEvent]] = relationship(back_populates="job", order_by="JobEvent.id")


class JobEvent(Base):
    """One row per transition: the job's history."""

    __tablename__ = "job_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    from_status: Mapped[JobStatus | None] = mapped_column(_enum(JobStatus, "job_event_from"))
    to_status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_event_to"))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="events")


class Delivery(Base):
    """One C-STORE of one result instance to one destination, with the status it got."""

    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int | None]
    outcome: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PeerConfig(Base):
    """A peer added at run time through the admin API (the configuration file's peers stay in force)."""

    __tablename__ = "peer_config"

    ae_title: Mapped[str] = mapped_column(String(16), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int]
    tls: Mapped[bool] = mapped_column(default=False)
    tls_subject_cn: Mapped[str | None] = mapped_column(String(64))  # the client certificate it must present
    tls_sha256: Mapped[str | None] = mapped_column(String(64))
    query: Mapped[bool] = mapped_column(default=False, server_default=false())  # counts and priors are asked of it
    retrieve: Mapped[str] = mapped_column(String(8), default="get", server_default="get")  # priors: C-GET or C-MOVE


class PriorStudy(Base):
    """A prior study found for a job whose model asks for priors (dicomnode.query.priors): where it
    stands (``found``, ``fetched``, ``used``, or ``not_used`` with the reason) and what its retrieval
    took. A study whose UID is here is a prior: it is kept (under retention) but never routed."""

    __tablename__ = "prior_study"
    __table_args__ = (UniqueConstraint("job_id", "series_uid", name="uq_prior_study_job_series"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    study_date: Mapped[str] = mapped_column(String(8), default="")
    peer: Mapped[str] = mapped_column(String(16), default="")
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    instances: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DestinationConfig(Base):
    """A result destination added at run time (the configuration file's destinations stay in force)."""

    __tablename__ = "destination_config"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int]
    tls: Mapped[bool] = mapped_column(default=False)
    send: Mapped[str] = mapped_column(String(32), default="SEG,SR")


class RuleConfig(Base):
    """A routing rule added at run time through the admin API."""

    __tablename__ = "rule_config"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    match: Mapped[str] = mapped_column(Text, default="{}")
    destinations: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")  # JSON list of names


class AdminSession(Base):
    """A logged-in admin user: the SHA-256 of the bearer token, never the token."""

    __tablename__ = "admin_session"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class StudySender(Base):
    """A STOW-RS user who sent (part of) a study: the ``sender`` role may read that study's results."""

    __tablename__ = "study_sender"

    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RemoteRun(Base):
    """A job sent for remote inference: the de-identification seed (so that a retry sends the same
    de-identified UIDs and the cloud deduplicates) and the de-identified study UID it went out under."""

    __tablename__ = "remote_run"

    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), primary_key=True)
    seed: Mapped[str] = mapped_column(String(64))
    deid_study_uid: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DeidUid(Base):
    """One UID of a remotely inferred job and the de-identified UID that replaced it (the edge's UID map)."""

    __tablename__ = "deid_uid"
    __table_args__ = (UniqueConstraint("job_id", "original_uid", name="uq_deid_uid_job_original"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    original_uid: Mapped[str] = mapped_column(String(64))
    deid_uid: Mapped[str] = mapped_column(String(64), index=True)


class ReferenceObject(Base):
    """An incoming SEG the node judged for local evaluation: a reader's reference compared with the
    node's result of a job (``outcome = "evaluated"``), or why it was not (``"ignored"``: the node's own
    output, no rule matched, no result of the node on its source series)."""

    __tablename__ = "reference_object"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    source_series_uid: Mapped[str] = mapped_column(String(64), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    model_id: Mapped[str | None] = mapped_column(String(64), index=True)
    model_version: Mapped[str | None] = mapped_column(String(32))
    agrees: Mapped[bool | None]
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)

    segments: Mapped[list[ReferenceSegment]] = relationship(back_populates="reference",
                                                            order_by="ReferenceSegment.segment_number")


class ReferenceSegment(Base):
    """One segment of an evaluated reference: Dice with the node's segment and both volumes (ml)."""

    __tablename__ = "reference_segment"

    id: Mapped[int] = mapped_column(primary_key=True)
    reference_id: Mapped[int] = mapped_column(ForeignKey("reference_object.id"), index=True)
    segment_number: Mapped[int]
    label: Mapped[str] = mapped_column(String(64))
    dice: Mapped[float] = mapped_column(Float)
    node_ml: Mapped[float] = mapped_column(Float)
    reference_ml: Mapped[float] = mapped_column(Float)

    reference: Mapped[ReferenceObject] = relationship(back_populates="segments")
