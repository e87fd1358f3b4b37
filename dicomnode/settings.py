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

from pydantic import BaseModel, ConfigDict, Field, field_validator
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

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @classmethod
    def parse(cls, value: Any) -> Any:
        """Accept ``AE@host:port`` strings as well as mappings."""
        if isinstance(value, str):
            match = _PEER_RE.match(value.strip())
            if match is None:
                raise ValueError(f"peer {value!r} must look like AE@host:port")
            return cls(ae_title=match["ae"], host=match["host"], port=int(match["port"]))
        return value

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class AdminUser(BaseModel):
    """An admin API user: a name and a PBKDF2 hash (``dicomnode admin hash-password``), never a password."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=64)
    password_hash: str = Field(pattern=r"^pbkdf2_sha256\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")


class Rule(BaseModel):
    """A routing rule: when every ``match`` regex is found in the series' attribute, run ``model``.

    ``match`` maps a DICOM keyword (``Modality``, ``SeriesDescription``, ``BodyPartExamined``, ...) to a
    regular expression searched case-insensitively in the attribute's value; an absent attribute never
    matches.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    model: str
    match: dict[str, str] = Field(default_factory=dict)

    @field_validator("match")
    @classmethod
    def _compile(cls, value: dict[str, str]) -> dict[str, str]:
        for keyword, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"rule pattern for {keyword} is not a regular expression: {exc}") from exc
        return value


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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dimse_timeout_seconds: float = Field(default=60.0, gt=0)
    acse_timeout_seconds: float = Field(default=30.0, gt=0)
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    retry_max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_delay_seconds: float = Field(default=600.0, gt=0)
    failure_notice: bool = True
    min_free_disk_mb: float = Field(default=1024.0, ge=0)
    max_associations: int = Field(default=10, ge=1)
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
    retention_days: float = Field(default=0.0, ge=0)
    retention_sweep_seconds: float = Field(default=3600.0, gt=0)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=0, ge=0, le=65535)
    admin_users: list[AdminUser] = Field(default_factory=list)
    admin_session_minutes: float = Field(default=60.0, gt=0)
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
