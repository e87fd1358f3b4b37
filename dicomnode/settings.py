"""One settings object: TOML file plus ``DICOMNODE_*`` environment variables, validated once.

Precedence, highest first: arguments to :meth:`Settings.load`, environment variables, the TOML file
named by ``DICOMNODE_CONFIG`` (or passed explicitly), then the defaults below. Every key is documented
in ``config/dicomnode.example.toml``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import re2
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
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


_SLUG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PEER_AE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,15}")  # an AE title that is also a URL path segment
# RFC 1123 2.1, plus "_" inside a label: names such as Docker Compose services and Windows hosts carry it
_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")


def check_slug(value: str, what: str = "name") -> str:
    """``value`` when it is a name that is safe as a URL path segment and a file name, else ValueError."""
    if not _SLUG_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} must be 1 to 64 letters, digits, '_', '.' or '-', starting with a "
                         "letter or digit, without '..'")
    return value


def _is_host_name(value: str) -> bool:
    labels = value.split(".")
    return (len(value) <= 253 and all(_LABEL_RE.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())  # 999.1.1.1 is neither an address nor a name


def _dialable(host: str) -> bool:
    return host != "*" and "/" not in host


def check_host(value: str, *, dialled: bool) -> str:
    """``value`` when it is an IP address or an RFC 1123 host name; also ``*`` (any address) or a network
    in CIDR form (``10.0.0.0/8``) when the host is only matched against callers (``dialled`` False)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if _is_host_name(value):
        return value
    if not dialled and value == "*":
        return value
    if not dialled and "/" in value:
        try:
            ipaddress.ip_network(value, strict=False)
            return value
        except ValueError:
            pass
    allowed = "an IP address or a host name" if dialled else 'an IP address, a network (10.0.0.0/8), a host name or "*"'
    raise ValueError(f"host {value!r} must be {allowed}")


class Peer(BaseModel):
    """A remote application entity: the PACS, or any other node that may call in."""

    model_config = ConfigDict(frozen=True)

    ae_title: str
    host: str = "127.0.0.1"
    port: int = Field(default=104, ge=1, le=65535)
    tls: bool = False  # connect to this peer with DICOM TLS (as SCU)
    explanation: Literal["seg", "sc"] = "seg"  # a classifier's evidence map: binary SEG of its region, or SC
    # mutual TLS bound to identity: a peer naming either may call in only over TLS with that client
    # certificate (subject CN, exactly; SHA-256 of the DER certificate, hex, colons optional)
    tls_subject_cn: str | None = Field(default=None, pattern=r"^[^\x00-\x1f\x7f]{1,64}$")
    tls_sha256: str | None = None
    # the node may ask this peer (a C-FIND SCP, such as the PACS): a study's instance counts
    # (dicomnode.query.counts) and a patient's prior studies, retrieved by C-GET or by C-MOVE to the node
    query: bool = False
    retrieve: Literal["get", "move"] = "get"

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        stripped = _check_ae_title(value)
        if not _PEER_AE_RE.fullmatch(stripped):
            raise ValueError(f"peer AE title {value!r} must be letters, digits, spaces, '_', '.' or '-', starting "
                             "with a letter or digit (it names the peer in the admin API's URLs)")
        return stripped

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        return check_host(value, dialled=False)

    @property
    def dialable(self) -> bool:
        """Whether the node can call this peer: its host is one address or name, not ``*`` or a network."""
        return _dialable(self.host)

    @field_validator("tls_sha256")
    @classmethod
    def _check_sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = value.replace(":", "").strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digits):
            raise ValueError(f"tls_sha256 {value!r} must be a SHA-256 fingerprint: 64 hex digits, colons optional")
        return digits

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

    name: Annotated[str, AfterValidator(check_slug)]
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

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        return check_host(value, dialled=True)

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


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.case_sensitive = False  # searched case-insensitively, as re.IGNORECASE did
_RE2_OPTIONS.log_errors = False
# what RE2 refuses because no linear-time matcher can do it, recognised by its error text
_NOT_LINEAR = (
    (re.compile(r"invalid escape sequence: \\[1-9]"), "a back-reference"),
    (re.compile(r"invalid perl operator: \(\?P$"), "a named back-reference"),
    (re.compile(r"invalid perl operator: \(\?<?[=!]"), "a lookaround assertion"),
    (re.compile(r"invalid perl operator: \(\?>|bad repetition operator: [*+?}]\+"),
     "an atomic group or a possessive quantifier"),
)


def compile_rule_pattern(keyword: str, pattern: str) -> Any:
    """``pattern`` compiled with RE2, which matches in time linear in the value's length whatever the
    pattern (no backtracking); case-insensitive. Python ``re`` syntax but for what only backtracking can
    do (back-references, lookaround, atomic groups, possessive quantifiers) and ``\\Z`` (RE2 spells it
    ``\\z``); ``\\d``, ``\\w`` and ``\\s`` are ASCII only.

    Raises
    ------
    ValueError
        The pattern is longer than 256 characters, or RE2 refuses it: the sentence names ``keyword`` and why.
    """
    if len(pattern) > _MAX_PATTERN:
        raise ValueError(f"rule pattern for {keyword} is longer than {_MAX_PATTERN} characters")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        why = next((what for found, what in _NOT_LINEAR if found.search(detail)), None)
        if why is not None:
            raise ValueError(f"rule pattern for {keyword} uses {why}, which cannot be matched in linear time "
                             "(RE2); rules may not use it") from None
        raise ValueError(f"rule pattern for {keyword} is not a regular expression RE2 accepts: {detail}") from None


def check_rule_pattern(keyword: str, pattern: str) -> str:
    """``pattern`` when :func:`compile_rule_pattern` accepts it; else ValueError naming ``keyword`` and why."""
    compile_rule_pattern(keyword, pattern)
    return pattern


class Rule(BaseModel):
    """A routing rule: when every ``match`` regex is found in the series' attribute, run ``model``.

    ``destinations`` names where its results go (``pacs``, or a destination's name); empty means every
    destination. ``match`` maps a DICOM keyword (``Modality``, ``SeriesDescription``, ``BodyPartExamined``, ...) to a
    regular expression searched case-insensitively in the attribute's value; an absent attribute never
    matches.
    """

    model_config = ConfigDict(frozen=True)

    name: Annotated[str, AfterValidator(check_slug)]
    model: Annotated[str, AfterValidator(lambda value: check_slug(value, "model"))]
    match: dict[str, str] = Field(default_factory=dict)
    # where this rule's results go, by destination name ("pacs" for the PACS); empty: every destination
    destinations: list[Annotated[str, AfterValidator(lambda value: check_slug(value, "destination"))]] = Field(
        default_factory=list)

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
    query_timeout_seconds: float = Field(default=5.0, gt=0)  # one C-FIND to a query peer, all answers
    query_max_answers: int = Field(default=200, ge=1)  # more pending answers than this: cancelled
    query_quiet_seconds: float = Field(default=1.0, gt=0)  # counts asked again when a study is this quiet
    prior_max_mb: float = Field(default=2048.0, gt=0)  # one prior study retrieved, at most
    prior_timeout_seconds: float = Field(default=120.0, gt=0)  # one prior study's retrieval, at most
    worker_poll_seconds: float = Field(default=0.5, gt=0)
    job_lease_seconds: float = Field(default=60.0, gt=0)
    models_dir: Path = Path(__file__).resolve().parent.parent / "models"
    demo_models: bool = False  # route to demonstration models (manifest demonstration = true)
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
    max_associate_rq_bytes: int = Field(default=256 * 1024, ge=16 * 1024)
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
    admin_public_origin: str = ""  # the console's origin in the admins' browsers; "": http://admin_host:admin_port
    admin_trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)  # addresses or networks
    admin_docs: bool = False  # /docs and /redoc (assets served by the node itself)
    dicomweb_max_body_bytes: int = Field(default=2 * 2**30, ge=1024)  # disk in spool_dir/.incoming, not memory
    dicomweb_request_timeout_seconds: float = Field(default=600.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    start_worker: bool = True

    @property
    def max_inflated_bytes(self) -> int:
        """``max_inflated_mb`` in bytes: how far a deflated dataset may inflate, wherever it is read."""
        return int(self.max_inflated_mb * 2**20)

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

    @field_validator("admin_public_origin")
    @classmethod
    def _check_origin(cls, value: str) -> str:
        origin = value.strip().rstrip("/").lower()
        if origin and not re.fullmatch(r"https?://([a-z0-9.\-]+|\[[0-9a-f:.]+\])(:\d{1,5})?", origin):
            raise ValueError(f"admin_public_origin {value[:80]!r} must look like https://host or https://host:port, "
                             "without a path")
        return origin

    @field_validator("admin_trusted_proxies", mode="before")
    @classmethod
    def _check_proxies(cls, value: Any) -> Any:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        for item in items:
            try:
                ipaddress.ip_network(str(item), strict=False)
            except ValueError:
                raise ValueError(f"admin_trusted_proxies: {str(item)[:60]!r} is not an IP address or network") from None
        return items

    @field_validator("pacs", mode="before")
    @classmethod
    def _parse_pacs(cls, value: Any) -> Any:
        if value in ("", None):
            return None
        return Peer.parse(value)

    @field_validator("pacs")
    @classmethod
    def _check_pacs(cls, value: Peer | None) -> Peer | None:
        if value is not None and not value.dialable:
            raise ValueError(f"pacs host {value.host!r} must be an IP address or a host name: the node calls it")
        return value

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
