"""No input can start a line of the node's log: control characters in every record are escaped.

An unknown AE proposing the abstract syntax ``1\\n<date> INFO dicomnode.node: node stopped`` used to have
pynetdicom's warning about that UID write the forged record verbatim, on a line of its own.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.log import extra, setup_logging
from tests.support.net import wait_for
from tests.support.peers import NodeProcess
from tests.support.rawdicom import A_ASSOCIATE_RJ, RawAssociation

FORGED = "2031-01-01 00:00:00,000 INFO dicomnode.node: node stopped"


def test_a_forged_abstract_syntax_cannot_start_a_log_line(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, command="receive", env={"DICOMNODE_MODELS_DIR": str(tmp_path / "no-models"),
                                                          "DICOMNODE_PEERS": "STORESCU@127.0.0.1:104",
                                                          "DICOMNODE_MIN_FREE_DISK_MB": "1"}).start()
    try:
        node.wait_started()
        raw = RawAssociation(node.port, "1\n" + FORGED, calling="INTRUDER")
        kind, _ = raw.read_pdu() if raw.accepted else (A_ASSOCIATE_RJ, b"")
        raw.close()
        assert (raw.accepted, kind) == (False, A_ASSOCIATE_RJ)
        wait_for(lambda: "association rejected" in node.log_path.read_text(errors="replace"), timeout=30,
                 msg="the rejection logged")
    finally:
        node.stop()
    log = node.log_path.read_text(errors="replace")
    assert not [line for line in log.splitlines() if line.startswith(FORGED)]
    assert "'1\\n" + FORGED + "'" in log  # pynetdicom's warning, quoting the UID, on its own line


@pytest.fixture
def node_log() -> Iterator[io.StringIO]:
    """The handler the node installs (:func:`dicomnode.log.setup_logging`), writing to a buffer."""
    setup_logging("INFO")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    logging.getLogger().handlers.clear()


def test_message_arguments_extras_and_tracebacks_are_escaped(node_log: io.StringIO) -> None:
    logger = logging.getLogger("some.library")
    logger.warning("value %r\r\n" + FORGED, "a\x00b\x1b[31m\x85\x7f", extra=extra(calling_ae="X\n" + FORGED))
    try:
        raise ValueError("withheld")
    except ValueError:
        logger.exception("failed\n" + FORGED)
    lines = node_log.getvalue().splitlines()
    assert len(lines) == 2  # one line per record, the traceback's included
    assert not [line for line in lines if line.startswith(FORGED)]
    assert lines[0].endswith(r"value 'a\x00b\x1b[31m\x85\x7f'\x0d\n" + FORGED + r" calling_ae=X\n" + FORGED)
    assert r"failed\n" + FORGED + r"\nTraceback (most recent call last):\n  File " in lines[1]
