"""Logging set-up and the one helper that builds ``extra``: never log PHI values.

Application logs carry job ids, stage names and *hashed* UIDs only. Patient names, IDs, birth dates and
accession numbers belong in the audit trail alone.

Every record, the node's and every library's, is written as one line: control characters in it (in the
message, its arguments, the exception text and the extras alike) are escaped (:func:`escape_controls`),
so that nothing a peer sends (an AE title, a UID that pynetdicom quotes in a warning) can start a line
that reads as another record.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom import config as pydicom_config

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0, DEL, C1, Unicode line/paragraph separators


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\n":
        return "\\n"
    return f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """``text`` on one line: a line feed as ``\\n``, other control characters as ``\\xNN`` (``\\uNNNN``)."""
    return _CONTROLS.sub(_escaped, text)


def uid_hash(uid: str | None) -> str:
    """A short, stable, non-reversible tag for a UID, safe to log."""
    if not uid:
        return "-"
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


# The stage every record of the node names (``extra(stage=...)``): what an operator filters the log by.
STAGES = frozenset({"serve", "cli", "config", "receive", "sweep", "route", "worker", "infer", "send", "query", "priors",
                    "remote", "evaluate", "retention", "audit"})


def extra(**fields: Any) -> dict[str, Any]:
    """Build the ``extra`` mapping for a log call (its ``stage`` one of :data:`STAGES`); ``study_uid`` and
    ``series_uid`` are hashed."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key.endswith("_uid"):
            out[key.removesuffix("_uid") + "_uid_hash"] = uid_hash(value)
        else:
            out[key] = value
    return {"ctx": out}


class _ContextFormatter(logging.Formatter):
    """One line per record plus ``ctx``, control characters escaped; tracebacks keep their frames (on the
    same line, ``\\n`` between them) but drop exception messages, which can quote patient data (SQL
    parameters, attribute values)."""

    def formatException(self, ei: Any) -> str:
        _, exc, tb = ei
        lines = ["Traceback (most recent call last):", *traceback.format_tb(tb)]
        chain = []
        while exc is not None:
            chain.append(f"{type(exc).__module__}.{type(exc).__qualname__}")
            exc = exc.__cause__ or exc.__context__
        lines.append(" <- ".join(chain) + " (message withheld: it may carry patient data)")
        return "\n".join(line.rstrip("\n") for line in lines)

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        ctx = getattr(record, "ctx", None)
        if ctx:
            base += " " + " ".join(f"{k}={v}" for k, v in ctx.items())
        return escape_controls(base)


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr in one line per record; pynetdicom's chatter is kept at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs dataset contents (PHI) at DEBUG/INFO: keep it quiet whatever the level.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # pydicom's and highdicom's validation warnings quote attribute values, patient names among them:
    # keep them out of the logs. Dirty headers are read leniently where they are read (lenient_reading),
    # never for the whole process; what the node writes is sanitised.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    for module in ("pydicom", "highdicom"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # logs UIDs of source datasets
    logging.getLogger("alembic").setLevel(logging.WARNING)


class _LenientReading:
    """pydicom's value validation off for reading (``reading_validation_mode = IGNORE``) while any thread
    is inside: its settings are process-wide, so the mode the process had comes back only when the last
    one leaves. What it leaves lenient is the values of the dirty headers real PACS send (PS3.5 value
    rules): never the structure, which :mod:`dicomnode.store.validity` judges whatever this mode is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._before = pydicom_config.WARN

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if not self._inside:
                self._before = pydicom_config.settings.reading_validation_mode
                pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if not self._inside:
                    pydicom_config.settings.reading_validation_mode = self._before


lenient_reading = _LenientReading()
"""``with lenient_reading():`` around a read of a dirty header and the values taken from it (pydicom
decodes a value when it is first asked for, and keeps the mode it was decoded under)."""
