"""The audit event types and outcomes (names follow DICOM PS3.15 A.5 where one exists)."""

from __future__ import annotations

import enum
from typing import TypedDict


class Subject(TypedDict):
    """The study and patient an audit row is about (the participant objects of its ATNA message)."""

    study_uid: str | None
    patient_id: str | None
    patient_name: str | None


class AuditEvent(enum.StrEnum):
    APPLICATION_START = "application_start"
    APPLICATION_STOP = "application_stop"
    MODEL_UNAVAILABLE = "model_unavailable"      # at start, one per model that cannot run (its rules suspended)
    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"
    BEGIN_TRANSFER_IN = "begin_transfer_in"      # first instance of a study arrives
    INSTANCE_RECEIVED = "instance_received"      # one per instance: rows written before the group commit
    INSTANCES_RECEIVED = "instances_received"    # one per association and study: count, re-sends, SOP classes
    INSTANCE_REFUSED = "instance_refused"
    STUDY_NOT_OWNED = "study_not_owned"          # a sender stored into a study it does not own: refused
    STUDY_RECEIVED = "study_received"
    SERIES_SKIPPED = "series_skipped"
    STUDY_NOT_ROUTED = "study_not_routed"
    JOB_QUEUED = "job_queued"
    JOB_STARTED = "job_started"
    INSTANCES_ACCESSED = "instances_accessed"    # a model read a series
    JOB_REQUEUED = "job_requeued"
    JOB_SUCCEEDED = "job_succeeded"
    JOB_SKIPPED = "job_skipped"
    JOB_FAILED = "job_failed"
    BEGIN_TRANSFER_OUT = "begin_transfer_out"    # results about to be sent
    RESULT_SENT = "result_sent"
    RESULT_SEND_FAILED = "result_send_failed"
    STUDY_DELETED = "study_deleted"              # retention purge
    USER_LOGIN = "user_login"
    USER_LOGIN_FAILED = "user_login_failed"
    USER_LOGOUT = "user_logout"
    CONFIG_CHANGED = "config_changed"
    REQUEST_REFUSED = "request_refused"          # a console change from another origin or without its token
    AUDIT_EXPORTED = "audit_exported"
    QUERY = "query"                              # the node asked a peer (C-FIND: counts, priors): DICOM Query


class Outcome(enum.StrEnum):
    """PS3.15 EventOutcomeIndicator, by name: 0 success, 4 minor, 8 serious, 12 major failure."""

    SUCCESS = "success"
    MINOR_FAILURE = "minor_failure"
    SERIOUS_FAILURE = "serious_failure"
    MAJOR_FAILURE = "major_failure"
