"""The tamper-evident trail on SQLite and PostgreSQL: append-only, hash-chained, verifiable, exportable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.anchor import read_checkpoints, write_checkpoint
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.models import AuditRecord
from dicomnode.audit.trail import record, verify
from dicomnode.db import make_engine, make_sessionmaker, session_scope
from dicomnode.node import start_node
from dicomnode.settings import Settings
from tests.conftest import make_settings
from tests.support.cli import run_cli
from tests.support.net import free_port, wait_for
from tests.support.tamper import tamper


def fill(sessions: sessionmaker[Session], n: int = 6) -> None:
    for i in range(n):
        with session_scope(sessions) as session:
            record(session, AuditEvent.INSTANCE_RECEIVED, actor="PACS", study_uid="1.2.3", patient_id="P1",
                   patient_name="DOE^JANE", index=i)


def test_untouched_trail_verifies(any_sessions: sessionmaker[Session]) -> None:
    fill(any_sessions)
    result = verify(any_sessions)
    assert (result.ok, result.rows) == (True, 6)


def test_triggers_refuse_update_and_delete(any_sessions: sessionmaker[Session]) -> None:
    fill(any_sessions, 1)
    for statement in ("UPDATE audit SET actor = 'X'", "DELETE FROM audit"):
        with pytest.raises(DatabaseError, match="append-only"), session_scope(any_sessions) as session:
            session.execute(text(statement))


def test_edited_row_is_found(any_sessions: sessionmaker[Session]) -> None:
    fill(any_sessions)
    tamper(any_sessions, "UPDATE audit SET patient_name = 'SOMEONE^ELSE' WHERE id = 3")
    result = verify(any_sessions)
    assert (result.ok, result.first_bad_id) == (False, 3)
    assert "edited" in result.reason


def test_deleted_row_is_found(any_sessions: sessionmaker[Session]) -> None:
    fill(any_sessions)
    tamper(any_sessions, "DELETE FROM audit WHERE id = 4")
    result = verify(any_sessions)
    assert (result.ok, result.first_bad_id) == (False, 5)
    assert "deleted" in result.reason


def test_swapped_rows_are_found(any_sessions: sessionmaker[Session]) -> None:
    fill(any_sessions)
    # move row 2 after row 5, hashes and all: renumber 2 -> 100, 5 -> 2, 100 -> 5
    tamper(any_sessions, "UPDATE audit SET id = 100 WHERE id = 2", "UPDATE audit SET id = 2 WHERE id = 5",
           "UPDATE audit SET id = 5 WHERE id = 100")
    result = verify(any_sessions)
    assert (result.ok, result.first_bad_id) == (False, 2)


def test_chain_survives_concurrent_writers(any_sessions: sessionmaker[Session]) -> None:
    import threading

    def writer(k: int) -> None:
        for i in range(10):
            with session_scope(any_sessions) as session:
                record(session, AuditEvent.JOB_QUEUED, actor=f"w{k}", index=i)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify(any_sessions).rows == 40 and verify(any_sessions).ok


def _cli(settings_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(args, {**os.environ, **settings_env})


def test_cli_verify_and_export(tmp_path: Path) -> None:
    env = {"DICOMNODE_DATA_DIR": str(tmp_path / "data")}
    assert _cli(env, "db", "upgrade").returncode == 0
    from dicomnode.db import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'data' / 'dicomnode.db'}"))
    with session_scope(sessions) as session:
        record(session, AuditEvent.STUDY_RECEIVED, actor="PACS", study_uid="1.2.3", patient_id="P1",
               patient_name="DOE^JANE", sop_classes={"1.2.840.10008.5.1.4.1.1.4": 3})
        record(session, AuditEvent.ASSOCIATION_REJECTED, Outcome.MINOR_FAILURE, actor="INTRUDER",
               address="127.0.0.1", reason="unknown")
    ok = _cli(env, "audit", "verify")
    assert ok.returncode == 0 and "intact: 2 rows" in ok.stdout

    out = tmp_path / "export.json"
    assert _cli(env, "audit", "export", "--format", "json", "--output", str(out)).returncode == 0
    rows = json.loads(out.read_text())
    assert [r["event"] for r in rows] == ["study_received", "association_rejected"]
    assert rows[0]["patient_name"] == "DOE^JANE" and len(rows[0]["hash"]) == 64
    assert [r["id"] for r in rows] == [1, 2] and set(rows[0]) == {
        "id", "at", "event", "outcome", "actor", "study_uid", "patient_id", "patient_name", "detail", "prev_hash",
        "hash"}
    assert out.stat().st_mode & 0o077 == 0  # PHI: owner-only
    # --since is inclusive, --until exclusive, to the row's own instant
    window = tmp_path / "window.json"
    assert _cli(env, "audit", "export", "--since", rows[1]["at"], "--until", rows[1]["at"], "--output",
                str(window)).returncode == 0
    assert json.loads(window.read_text()) == []
    assert _cli(env, "audit", "export", "--since", rows[1]["at"], "--output", str(window)).returncode == 0
    assert [r["id"] for r in json.loads(window.read_text())][:1] == [2]

    xml = _cli({**env, "DICOMNODE_AUDIT_ENTERPRISE_SITE_ID": "HOSPITAL-7"}, "audit", "export", "--format", "xml",
               "--since", "2000-01-01")
    assert xml.returncode == 0
    # the two rows, and the exports before it ("Audit Log Used"), in one XML document
    assert xml.stdout.startswith("<?xml version='1.0' encoding='utf-8'?>\n<AuditMessages>\n")
    assert xml.stdout.endswith("\n</AuditMessages>\n") and xml.stdout.count("<?xml") == xml.stdout.count("?>") == 1
    messages = ET.fromstring(xml.stdout.encode()).findall("AuditMessage")
    assert len(messages) == 5
    assert {m.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") for m in messages} == {"HOSPITAL-7"}
    assert {m.find("AuditSourceIdentification").get("AuditSourceID") for m in messages} == {"DICOMNODE"}
    # the node in each message: its AE title, the exporting process, this host (ATNA's network access point)
    node = [p.attrib for m in messages for p in m.findall("ActiveParticipant") if p.get("UserID") == "DICOMNODE"]
    assert len(node) == 5 and all(p["AlternativeUserID"] == str(os.getpid()) for p in node)  # in-process CLI
    assert all(p["NetworkAccessPointID"] == socket.gethostname() for p in node)
    sourced = _cli({**env, "DICOMNODE_AUDIT_SOURCE_ID": "AUDIT-SRC"}, "audit", "export", "--format", "xml")
    assert {m.find("AuditSourceIdentification").get("AuditSourceID")
            for m in ET.fromstring(sourced.stdout.encode()).findall("AuditMessage")} == {"AUDIT-SRC"}
    for code in ("110104", "110113", "110101"):
        assert f'csd-code="{code}"' in xml.stdout

    tamper(sessions, "UPDATE audit SET actor = 'SOMEONE' WHERE id = 1")
    broken = _cli(env, "audit", "verify")
    assert broken.returncode == 1
    assert "BROKEN at row 1" in broken.stderr


def test_removed_newest_rows_are_found_against_the_anchor(any_sessions: sessionmaker[Session],
                                                          tmp_path: Path) -> None:
    fill(any_sessions, 20)
    anchor = tmp_path / "anchor.jsonl"
    write_checkpoint(any_sessions, anchor)
    tamper(any_sessions, "DELETE FROM audit WHERE id > 4")  # the newest 16 rows
    assert verify(any_sessions).ok  # the chain alone cannot tell
    result = verify(any_sessions, read_checkpoints(anchor))
    assert (result.ok, result.rows, result.first_bad_id) == (False, 4, 5)
    assert "rows 5 to 20 (ids 5 to 20) are missing" in result.reason


def test_rows_replaced_after_the_anchor_are_found(any_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    fill(any_sessions, 6)
    anchor = tmp_path / "anchor.jsonl"
    write_checkpoint(any_sessions, anchor)
    tamper(any_sessions, "DELETE FROM audit WHERE id > 3")
    fill(any_sessions, 5)  # a rewritten tail, longer than the anchored one and chained correctly
    assert verify(any_sessions).ok
    result = verify(any_sessions, read_checkpoints(anchor))
    assert (result.ok, result.rows) == (False, 6)
    assert "rewritten" in result.reason


def test_a_growing_trail_matches_all_its_checkpoints(any_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    anchor = tmp_path / "anchor.jsonl"
    write_checkpoint(any_sessions, anchor)  # empty trail
    for _ in range(3):
        fill(any_sessions, 4)
        write_checkpoint(any_sessions, anchor)
    assert [c.rows for c in read_checkpoints(anchor)] == [0, 4, 8, 12]
    assert anchor.stat().st_mode & 0o077 == 0
    result = verify(any_sessions, read_checkpoints(anchor))
    assert (result.ok, result.rows) == (True, 12)


def test_cli_verify_with_anchor_names_the_missing_range(sessions: sessionmaker[Session], settings: Settings) -> None:
    fill(sessions, 10)
    write_checkpoint(sessions, settings.anchor_path)
    tamper(sessions, "DELETE FROM audit WHERE id > 7")
    env = {**os.environ, "DICOMNODE_DATA_DIR": str(settings.data_dir)}
    plain = run_cli(["audit", "verify"], env)
    assert plain.returncode == 0 and "intact: 7 rows" in plain.stdout
    anchored = run_cli(["audit", "verify", "--anchor", str(settings.anchor_path)], env)
    assert anchored.returncode == 1
    assert "rows 8 to 10 (ids 8 to 10) are missing" in anchored.stderr


def test_the_node_anchors_its_head_periodically_and_at_stop(settings: Settings) -> None:
    node_settings = make_settings(settings.data_dir, host="127.0.0.1", port=free_port(), start_worker=False,
                                  audit_anchor_seconds=0.3, min_free_disk_mb=1)
    node = start_node(node_settings)
    try:
        wait_for(lambda: node_settings.anchor_path.is_file() and len(read_checkpoints(node_settings.anchor_path)) >= 3,
                 timeout=30, msg="three checkpoints: at start and periodically")
    finally:
        node.stop()
    last = read_checkpoints(node_settings.anchor_path)[-1]
    sessions = make_sessionmaker(make_engine(node_settings.db_url))
    with sessions() as session:
        newest = session.scalars(select(AuditRecord).order_by(AuditRecord.id.desc()).limit(1)).one()
    assert (newest.event, last.head_id, last.head_hash) == ("application_stop", newest.id, newest.hash)
    assert verify(sessions, read_checkpoints(node_settings.anchor_path)).ok
