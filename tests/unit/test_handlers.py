"""DIMSE handlers return a status and never raise (STYLE.md): the C-STORE handler's two ways of failing
unexpectedly each answer 0xC2FF and log what happened, with the stage, never the dataset; an association
that cannot be checked is rejected (or, failing that, aborted), never accepted."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from dicomnode.receive.handlers import Received, handle_requested, handle_store, handle_tls_failure, store_received
from dicomnode.store.ingest import UNEXPECTED


def _logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "unexpected failure while storing an instance"]


def test_a_c_store_event_that_cannot_be_read_is_0xc2ff_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="dicomnode.receive.handlers")
    event = SimpleNamespace(request=SimpleNamespace())  # no AffectedSOPClassUID, no association
    assert handle_store(event, None) == UNEXPECTED  # type: ignore[arg-type]
    (record,) = _logged(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert getattr(record, "ctx", None) == {"stage": "receive"}


def test_a_landing_that_raises_is_0xc2ff_and_logged(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.ERROR, logger="dicomnode.receive.handlers")

    def land(*_: Any) -> None:
        raise RuntimeError("the database went away")

    ctx = SimpleNamespace(lands=SimpleNamespace(land=land))
    assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="PACS", primitive=None, address="127.0.0.1"))
    received = Received(assoc, tmp_path / "x.dcm", "1.2.840.10008.1.2.1", "1.2.840.10008.5.1.4.1.1.4", "1.2.3")
    assert store_received(received, ctx) == UNEXPECTED  # type: ignore[arg-type]
    (record,) = _logged(caplog)
    assert getattr(record, "ctx", None) == {"stage": "receive"}


class _Association:
    """What the handlers read of a pynetdicom association, recording the rejection or abort they send."""

    def __init__(self, *, reject_fails: bool = False, abort_fails: bool = False) -> None:
        self.requestor = SimpleNamespace(ae_title="PACS", primitive=None, address="127.0.0.1")
        self.rejections: list[tuple[int, int, int]] = []
        self.aborted = False
        self.acse = SimpleNamespace(send_reject=self._reject)
        self._reject_fails, self._abort_fails = reject_fails, abort_fails

    def _reject(self, result: int, source: int, diagnostic: int) -> None:
        if self._reject_fails:
            raise ConnectionResetError("the peer is gone")
        self.rejections.append((result, source, diagnostic))

    def abort(self) -> None:
        if self._abort_fails:
            raise OSError("the socket is gone")
        self.aborted = True


def test_an_association_check_that_fails_rejects_transiently(caplog: pytest.LogCaptureFixture) -> None:
    """An association the node cannot check (here: no settings to check it against) is not accepted: it is
    rejected as transient (result 2), by the service user (source 1), no reason given (1), so that the
    caller may try again; logged with the stage."""
    caplog.set_level(logging.ERROR, logger="dicomnode.receive.handlers")
    assoc = _Association()
    handle_requested(SimpleNamespace(assoc=assoc), SimpleNamespace(settings=None))  # type: ignore[arg-type]
    assert assoc.rejections == [(0x02, 0x01, 0x01)] and not assoc.aborted
    (record,) = [r for r in caplog.records if r.getMessage() == "association check failed; rejecting"]
    assert getattr(record, "ctx", None) == {"stage": "receive"}


def test_an_association_that_cannot_be_rejected_is_aborted() -> None:
    assoc = _Association(reject_fails=True)
    handle_requested(SimpleNamespace(assoc=assoc), SimpleNamespace(settings=None))  # type: ignore[arg-type]
    assert assoc.aborted


def test_a_refusal_whose_audit_row_cannot_be_written_is_logged_and_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    """The database is down while a TLS handshake fails: the refusal is still logged (its event named, no
    values), and the accept loop's callback returns."""
    caplog.set_level(logging.ERROR, logger="dicomnode.receive.handlers")

    def refused(*_: Any, **__: Any) -> None:
        raise OperationalError("INSERT INTO audit", {}, Exception("database is locked"))

    ctx = SimpleNamespace(bursts=SimpleNamespace(refused=refused))
    handle_tls_failure("127.0.0.1", "no certificate", ctx)  # type: ignore[arg-type]
    (record,) = [r for r in caplog.records if r.getMessage() == "could not write audit row"]
    assert getattr(record, "ctx", None) == {"stage": "receive", "event": "association_rejected"}


def test_an_association_that_can_be_neither_rejected_nor_aborted_is_said_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicomnode.receive.handlers")
    assoc = _Association(reject_fails=True, abort_fails=True)
    handle_requested(SimpleNamespace(assoc=assoc), SimpleNamespace(settings=None))  # type: ignore[arg-type]
    (said,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (said.getMessage(), getattr(said, "ctx", None)) == ("could not abort the association", {"stage": "receive"})
