"""The admin API's request and response bodies. Requests forbid unknown fields, so that a typo is a 422
rather than a silently ignored setting."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9 _.\-]{1,64}$"
"""A peer's AE title or a destination's or rule's name, as a URL path segment."""
UID_PATTERN = r"^[0-9.]{1,64}$"
"""A DICOM UID, as a URL path segment."""
JOB_ID_MAX = 2**63 - 1
"""The largest job id (a signed 64-bit column): a larger one in a URL is no such job (404)."""


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(Body):
    user: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class Token(BaseModel):
    token: str
    expires_in: int
    role: str


class PeerBody(Body):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=104, ge=1, le=65535)
    tls: bool = False
    tls_subject_cn: str | None = Field(default=None, pattern=r"^[^\x00-\x1f\x7f]{1,64}$")  # as Peer's
    tls_sha256: str | None = Field(default=None, pattern=r"^(?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$")


class DestinationBody(Body):
    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=104, ge=1, le=65535)
    tls: bool = False
    send: tuple[Literal["SEG", "SR"], ...] = Field(default=("SEG", "SR"), min_length=1)


class EchoResult(BaseModel):
    target: str
    ok: bool
    status: str
    rtt_ms: float


class RuleBody(Body):
    model: str = Field(min_length=1, max_length=64)
    match: dict[str, str] = Field(default_factory=dict)
    destinations: list[str] = Field(default_factory=list, max_length=32)
    model_not_installed_ok: bool = False  # save a rule for a model not installed yet (refused otherwise)


class Listing(BaseModel):
    configured: list[dict[str, Any]]
    stored: list[dict[str, Any]]


class StudyList(BaseModel):
    disk: dict[str, Any]
    studies: list[dict[str, Any]]


class JobView(BaseModel):
    id: int
    study_uid: str
    series_uid: str
    rule: str
    model: str
    version: str
    status: str
    reason: str
    attempts: int
    run_after: str | None
    updated_at: str


class Health(BaseModel):
    status: str
    disk: dict[str, Any]


class Error(BaseModel):
    detail: Any
