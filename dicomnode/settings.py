"""One settings object: TOML file plus ``DICOMNODE_*`` environment variables, validated once.

Precedence, highest first: arguments to :meth:`Settings.load`, environment variables, the TOML file
named by ``DICOMNODE_CONFIG`` (or passed explicitly), then the defaults below. Every key is documented
in ``config/dicomnode.example.toml``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: 16 chars, no backslash
_PEER_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_RE.match(value):
        raise ValueError(f"AE title {value!r} must be 1 to 16 printable characters without backslash")
    return stripped


class Peer(BaseModel):
    """A remote application entity: the PACS, or any other node that may call in."""

    model_config = ConfigDict(frozen=True)

    ae_title: str
    host: str = "127.0.0.1"
    port: int = Field(default=104, ge=1, le=65535)
    tls: bool = False  # connect to this peer with DICOM TLS (as SCU)
    explanation: Literal["seg", "sc"] = "seg"  # a classifier's evidence map: fractional SEG, or SC colour overlay

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @classmethod
    def parse(cls, value: Any) -> Any:
        """Accept ``AE@host:port`` strings and JSON objects as well as mappings."""
        if isinstance(value, str) and value.strip().startswith("{"):
            return cls.model_validate_json(value)
        if isinstance(value, str):
            match = _PEER_RE.match(value.strip())
            if match is None:
                raise ValueError(f"peer {value!r} must look like AE@host:port")
            return cls(ae_title=match["ae"], host=match["host"], port=int(match["port"]))
        return value

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


ResultKind = Literal["SEG", "SR"]


class Destination(BaseModel):
    """Where results go besides (or instead of) the PACS: a named C-STORE SCP (``kind = "dimse"``) or a
    DICOMweb STOW-RS service (``kind = "dicomweb"``: ``url``, a bearer token read from ``token_file``,
    server certificates checked against ``tls_ca_file`` or the system's), and which results it takes,
    for example a research archive that gets the SEG only."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    kind: Literal["dimse", "dicomweb"] = "dimse"
    ae_title: str = ""
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=104, ge=1, le=65535)
    tls: bool = False
    send: tuple[ResultKind, ...] = Field(default=("SEG", "SR"), min_length=1)
    url: str = Field(default="", pattern=r"^(https?://[^\s]+)?$")
    token_file: Path | None = None
    tls_ca_file: Path | None = None

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value) if value else value

    @model_validator(mode="after")
    def _check_kind(self) -> Destination:
        if self.kind == "dimse" and not self.ae_title:
            raise ValueError(f"destination {self.name}: a DIMSE destination needs ae_title")
        if self.kind == "dicomweb" and not self.url:
            raise ValueError(f"destination {self.name}: a dicomweb destination needs url (https://host/dicomweb)")
        return self

    @property
    def peer(self) -> Peer:
        return Peer(ae_title=self.ae_title or "DICOMWEB", host=self.host, port=self.port, tls=self.tls)

    def __str__(self) -> str:
        return self.url if self.kind == "dicomweb" else str(self.peer)


class AdminUser(BaseModel):
    """An admin API user: a name, a PBKDF2 hash (``dicomnode admin hash-password``), never a password, and a
    role: ``admin`` may change things and sees patient data; ``viewer`` may read, with identifiers masked;
    ``sender`` may store by STOW-RS and read the results of the studies it sent, and may not administer."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=64)
    password_hash: str = Field(pattern=r"^pbkdf2_sha256\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")
    role: Literal["admin", "viewer", "sender"] = "admin"


_MAX_PATTERN = 256


def _backtracking_risk(items: Any, inside_repeat: bool = False) -> str | None:
    """Why a parsed pattern may backtrack catastrophically: a quantifier, an alternation or a
    back-reference inside a repeated group (``^(a+)+$``, ``(a|aa)*``); None when it cannot."""
    for op, arg in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            _low, high, body = arg
            repeats = high is re._constants.MAXREPEAT or high > 1  # type: ignore[attr-defined]
            if inside_repeat and repeats:
                return "a quantifier inside a repeated group (nested quantifiers)"
            found = _backtracking_risk(body, inside_repeat or repeats)
        elif name == "SUBPATTERN":
            found = _backtracking_risk(arg[-1], inside_repeat)
        elif name == "BRANCH":
            if inside_repeat:
                return "an alternation inside a repeated group"
            found = next((r for branch in arg[1] if (r := _backtracking_risk(branch, inside_repeat))), None)
        elif name in ("GROUPREF", "GROUPREF_EXISTS"):
            return "a back-reference"
        elif name in ("ASSERT", "ASSERT_NOT"):
            found = _backtracking_risk(arg[1], inside_repeat)
        else:
            found = None
        if found:
            return found
    return None


def check_rule_pattern(keyword: str, pattern: str) -> str:
    """Compile ``pattern`` and refuse one that could stall routing by catastrophic backtracking."""
    if len(pattern) > _MAX_PATTERN:
        raise ValueError(f"rule pattern for {keyword} is longer than {_MAX_PATTERN} characters")
    try:
        parsed = re._parser.parse(pattern)  # type: ignore[attr-defined]
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"rule pattern for {keyword} is not a regular expression: {exc}") from exc
    risk = _backtracking_risk(parsed.data)
    if risk:
        raise ValueError(f"rule pattern for {keyword} may backtrack catastrophically: it has {risk}")
    return pattern


class Rule(BaseModel):
    """A routing rule: when every ``match`` regex is found in the series' attribute, run ``model``.

    ``destinations`` names where its results go (``pacs``, or a destination's name); empty means every
    destination. ``match`` maps a DICOM keyword (``Modality``, ``SeriesDescription``, ``BodyPartExamined``, ...) to a
    regular expression searched case-insensitively in the attribute's value; an absent attribute never
    matches.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    model: str
    match: dict[str, str] = Field(default_factory=dict)
    # where this rule's results go, by destination name ("pacs" for the PACS); empty: every destination
    destinations: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]] = Field(default_factory=list)

    @field_validator("match")
    @classmethod
    def _compile(cls, value: dict[str, str]) -> dict[str, str]:
        for keyword, pattern in value.items():
            check_rule_pattern(keyword, pattern)
        return value


class ReferenceRules(BaseModel):
    """Which incoming SEG objects count as radiologists' references for local evaluation.

    An object (never the node's own) counts when any rule given here matches: ``series_description`` or
    ``manufacturer`` (regular expressions searched case-insensitively in the attribute), or the sending AE
    title being in ``calling_aes``. With no rule given, nothing counts and local evaluation is off.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    series_description: str = ""
    manufacturer: str = ""
    calling_aes: list[str] = Field(default_factory=list)

    @field_validator("series_description", "manufacturer")
    @classmethod
    def _pattern(cls, value: str, info: Any) -> str:
        return check_rule_pattern(str(info.field_name), value) if value else value

    @property
    def enabled(self) -> bool:
        return bool(self.series_description or self.manufacturer or self.calling_aes)


class Settings(BaseSettings):
    """Everything the node needs, in one frozen object passed explicitly."""

    model_config = SettingsConfigDict(env_prefix="DICOMNODE_", frozen=True, extra="forbid")

    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    data_dir: Path = Path("./data")
    database_url: str = ""
    pacs: Annotated[Peer | None, NoDecode] = None
    peers: Annotated[list[Peer], NoDecode] = Field(default_factory=list)
    require_known_callers: bool = True
    study_idle_seconds: float = Field(default=5.0, gt=0)
    sweep_interval_seconds: float = Field(default=0.25, gt=0)
    worker_poll_seconds: float = Field(default=0.5, gt=0)
    job_lease_seconds: float = Field(default=60.0, gt=0)
    models_dir: Path = Path(__file__).resolve().parent.parent / "models"
    rules: list[Rule] = Field(default_factory=list)
    reference: ReferenceRules = Field(default_factory=ReferenceRules)
    destinations: list[Destination] = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    inference_threads: int = Field(default=0, ge=0)
    inference_concurrency: int = Field(default=1, ge=1)
    dimse_timeout_seconds: float = Field(default=60.0, gt=0)
    acse_timeout_seconds: float = Field(default=30.0, gt=0)
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    retry_max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_delay_seconds: float = Field(default=600.0, gt=0)
    failure_notice: bool = True
    min_free_disk_mb: float = Field(default=1024.0, ge=0)
    max_associations: int = Field(default=10, ge=1)
    share_port: bool = False
    receive_engine: Literal["native", "pynetdicom"] = "native"
    max_pdu_bytes: int = Field(default=131072, ge=0)
    first_pdu_timeout_seconds: float = Field(default=5.0, gt=0)
    tls_handshake_timeout_seconds: float = Field(default=5.0, gt=0)
    max_instance_mb: float = Field(default=1024.0, gt=0)
    max_inflated_mb: float = Field(default=512.0, gt=0)
    plain_port_enabled: bool = True
    tls_port: int | None = Field(default=None, ge=1, le=65535)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    audit_repository: str = ""
    audit_source_id: str = ""
    audit_enterprise_site_id: str = ""
    audit_poll_seconds: float = Field(default=1.0, gt=0)
    audit_retry_seconds: float = Field(default=2.0, gt=0)
    audit_anchor_file: Path | None = None
    audit_anchor_seconds: float = Field(default=60.0, gt=0)
    audit_burst_seconds: float = Field(default=60.0, gt=0)  # repeated refusals: one row per burst, with the count
    retention_days: float = Field(default=0.0, ge=0)
    retention_sweep_seconds: float = Field(default=3600.0, gt=0)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=0, ge=0, le=65535)
    admin_users: list[AdminUser] = Field(default_factory=list)
    admin_session_minutes: float = Field(default=60.0, gt=0)
    admin_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    admin_max_upload_bytes: int = Field(default=256 * 2**20, ge=1024)
    admin_request_timeout_seconds: float = Field(default=10.0, gt=0)
    admin_max_connections: int = Field(default=64, ge=1)
    admin_login_free_failures: int = Field(default=3, ge=1)
    admin_login_max_delay_seconds: float = Field(default=60.0, gt=0)
    admin_login_burst_seconds: float = Field(default=300.0, gt=0)
    dicomweb_max_body_bytes: int = Field(default=2 * 2**30, ge=1024)
    dicomweb_request_timeout_seconds: float = Field(default=600.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    start_worker: bool = True

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("audit_repository")
    @classmethod
    def _check_repository(cls, value: str) -> str:
        if value and not re.match(r"^(udp|tcp|tls)://[^:/]+:\d{1,5}$", value):
            raise ValueError(f"audit_repository {value!r} must look like udp://, tcp:// or tls://host:port")
        return value

    @field_validator("pacs", mode="before")
    @classmethod
    def _parse_pacs(cls, value: Any) -> Any:
        if value in ("", None):
            return None
        return Peer.parse(value)

    @field_validator("peers", mode="before")
    @classmethod
    def _parse_peers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [Peer.parse(item) for item in value.split(",") if item.strip()]
        return [Peer.parse(item) for item in value]

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def anchor_path(self) -> Path:
        """Where the audit trail's head checkpoints go: ``audit_anchor_file`` or ``data_dir``."""
        return self.audit_anchor_file or self.data_dir / "audit-anchor.jsonl"

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL: ``database_url`` or an SQLite file in ``data_dir``."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'dicomnode.db').resolve()}"

    @property
    def known_peers(self) -> tuple[Peer, ...]:
        """The peers allowed to call in: the PACS first, then ``peers``."""
        return ((self.pacs,) if self.pacs else ()) + tuple(self.peers)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Read the TOML file (argument, else ``DICOMNODE_CONFIG``), environment and overrides."""
        path = config_file or os.environ.get("DICOMNODE_CONFIG") or None
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"configuration file {path} does not exist")
        return _with_toml(cls, path)(**overrides)


def _with_toml(base: type[Settings], path: Path | str | None) -> type[Settings]:
    """A subclass of ``base`` whose sources include the TOML file at ``path``."""

    class _Loaded(base):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if path is not None:
                sources += (TomlConfigSettingsSource(settings_cls, toml_file=Path(path)),)
            return sources

    _Loaded.__name__ = "Settings"
    return _Loaded
