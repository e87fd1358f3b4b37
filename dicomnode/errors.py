"""One exception hierarchy. The docstring of each class is its default message."""

from __future__ import annotations


class DicomNodeError(Exception):
    """dicomnode failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class StoreError(DicomNodeError):
    """The instance could not be stored durably."""


class UidCollision(DicomNodeError):
    """The instance's UIDs already belong to another study, series or patient; it was not merged."""


class SourceMismatch(DicomNodeError):
    """A spooled file does not carry the study, series and SOP Instance UIDs the database holds for it."""


class SeriesNotUsable(DicomNodeError):
    """The series cannot be used by the model; the message says why."""


class ModelError(DicomNodeError):
    """The model could not be loaded or run."""


class BuildError(DicomNodeError):
    """The result objects could not be built."""


class SendError(DicomNodeError):
    """The result could not be delivered to the destination."""

    def __init__(self, message: str | None = None, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class IllegalTransition(DicomNodeError):
    """That job-state transition is not allowed."""
