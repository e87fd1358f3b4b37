"""The anchor file: checkpoints read back as written, bad lines named."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.anchor import Checkpoint, head, read_checkpoints, write_checkpoint

ONE = {"at": "2026-01-01T00:00:00.000000Z", "rows": 3, "head_id": 3, "head_hash": "ab" * 32}
TWO = {**ONE, "rows": 5, "head_id": 6}


def test_blank_lines_are_skipped_not_the_end(tmp_path: Path) -> None:
    path = tmp_path / "anchor.jsonl"
    path.write_text(json.dumps(ONE) + "\n\n" + json.dumps(TWO) + "\n")
    assert read_checkpoints(path) == [Checkpoint(**ONE), Checkpoint(**TWO)]


def test_a_bad_line_is_named_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "anchor.jsonl"
    path.write_text(json.dumps(ONE) + "\n" + '{"rows": "x"}\n')
    with pytest.raises(ValueError, match="anchor file line 2 is not a checkpoint"):
        read_checkpoints(path)


def test_the_head_of_an_empty_trail(sessions: sessionmaker[Session]) -> None:
    checkpoint = head(sessions)
    assert (checkpoint.rows, checkpoint.head_id, checkpoint.head_hash) == (0, 0, "")
    at = dt.datetime.strptime(checkpoint.at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - at).total_seconds()) < 60  # UTC, not local time


def test_the_anchor_file_and_its_folders_are_owner_only(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    path = tmp_path / "anchors" / "node" / "audit-anchor.jsonl"
    previous = os.umask(0)
    try:
        write_checkpoint(sessions, path)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o600
    assert all(p.stat().st_mode & 0o777 == 0o700 for p in (path.parent, path.parent.parent))


def test_a_damaged_checkpoint_message_is_named(tmp_path: Path) -> None:
    path = tmp_path / "collected.log"
    path.write_text('<AuditMessage><ParticipantObjectIdentification><ParticipantObjectDetail '
                    'type="dicomnode-audit-checkpoint" value="not base64!"/></ParticipantObjectIdentification>'
                    '</AuditMessage>\n')
    with pytest.raises(ValueError, match="audit message 1 in the file does not parse"):
        read_checkpoints(path)
