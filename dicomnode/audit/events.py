"""The audit event types and outcomes (names follow DICOM PS3.15 A.5 where one exists)."""

from __future__ import annotations

import enum


class AuditEvent(enum.StrEnum):
    APPLICATION_START = "application_start"
    APPLICATION_STOP = "application_stop"
    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"
    INSTANCE_RECEIVED = "instance_received"
    INSTANCE_REFUSED = "instance_refused"
    STUDY_RECEIVED = "study_received"
    SERIES_SKIPPED = "series_skipped"
    STUDY_NOT_ROUTED = "study_not_routed"
    JOB_QUEUED = "job_queued"
    JOB_STARTED = "job_started"
    JOB_REQUEUED = "job_requeued"
    JOB_SUCCEEDED = "job_succeeded"
    JOB_SKIPPED = "job_skipped"
    JOB_FAILED = "job_failed"
    RESULT_SENT = "result_sent"
    RESULT_SEND_FAILED = "result_send_failed"


class Outcome(enum.StrEnum):
    """PS3.15 EventOutcomeIndicator, by name: 0 success, 4 minor, 8 serious, 12 major failure."""

    SUCCESS = "success"
    MINOR_FAILURE = "minor_failure"
    SERIOUS_FAILURE = "serious_failure"
    MAJOR_FAILURE = "major_failure"
