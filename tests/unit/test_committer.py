"""Group commit: every receipt gets its own answer, whichever batch carried it, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.jobs.models import Instance, Series
from dicomnode.store.committer import GroupCommitter, Receipt, Recorded
from dicomnode.store.index import InstanceMeta
from dicomnode.store.ownership import NOT_OWNED

BASE = InstanceMeta(study_uid="1.2.3", series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.0",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax_uid="1.2.840.10008.1.2.1",
                    modality="MR", series_number=3, series_description="T1", patient_id="P1", patient_name="DOE^JANE")


def _receipt(folder: Path, meta: InstanceMeta, sha: str = "a" * 64) -> Receipt:
    path = folder / meta.study_uid / meta.series_uid / f"{meta.sop_instance_uid}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    return Receipt(meta, path, sha, 1, "PACS", "127.0.0.1")


def _concurrently(committer: GroupCommitter, receipts: list[Receipt]) -> list[Recorded]:
    results: list[Recorded | None] = [None] * len(receipts)
    start = threading.Barrier(len(receipts))

    def one(i: int) -> None:
        start.wait()  # all at once: the committer batches whoever is waiting
        results[i] = committer.record(receipts[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(receipts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def test_concurrent_receipts_are_all_recorded_and_a_collision_spoils_no_other(
    any_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    committer = GroupCommitter(any_sessions)
    assert committer.record(_receipt(tmp_path, BASE)).changed  # the study exists, patient P1
    metas = [dataclasses.replace(BASE, sop_instance_uid=f"1.2.3.4.{i}") for i in range(1, 9)]
    intruder = dataclasses.replace(BASE, sop_instance_uid="1.2.3.4.99", patient_id="P2")  # same study, other patient
    results = _concurrently(committer, [_receipt(tmp_path, m) for m in [*metas[:4], intruder, *metas[4:]]])
    assert [r.changed for r in results] == [True] * 4 + [False] + [True] * 4
    assert "another patient" in results[4].collision
    assert all(not r.collision and not r.db_error for i, r in enumerate(results) if i != 4)
    with any_sessions() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
        (series,) = session.scalars(select(Series)).all()
    assert stored == {BASE.sop_instance_uid, *(m.sop_instance_uid for m in metas)}
    assert series.revision == 1


def test_unchanged_resend_is_recorded_as_unchanged(any_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    committer = GroupCommitter(any_sessions)
    assert committer.record(_receipt(tmp_path, BASE)).changed
    again = committer.record(_receipt(tmp_path, BASE))
    assert (again.changed, again.collision, again.db_error) == (False, "", "")


def test_a_missing_spool_folder_is_a_spool_error_not_a_row(any_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    receipt = Receipt(BASE, tmp_path / "gone" / "x.dcm", "a" * 64, 1, "PACS", "127.0.0.1")
    result = GroupCommitter(any_sessions).record(receipt)
    assert result.spool_error and not result.changed
    with any_sessions() as session:
        assert session.scalars(select(Instance)).all() == []


def test_an_unexpected_error_still_answers_every_receipt_and_is_logged_by_stage(
    any_sessions: sessionmaker[Session], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A leader never leaves its followers without an answer, whatever fails (here a receipt without its
    instance's metadata: a programming error, neither a database nor a file-system one)."""
    broken = dataclasses.replace(_receipt(tmp_path, BASE), meta=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR):
        result = GroupCommitter(any_sessions).record(broken)
    assert result == Recorded(db_error="unexpected error")
    (logged,) = [r for r in caplog.records if r.name == "dicomnode.store.committer"]
    assert logged.getMessage() == "group commit failed unexpectedly" and logged.exc_info is not None
    assert getattr(logged, "ctx", {}).get("stage") == "receive"


def test_the_commit_waits_for_each_files_bytes_and_a_failed_fsync_spoils_no_other(
    any_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A file renamed into the spool while its fsync still runs (the node's data phase): its row is
    committed only once ``durable()`` returned; one whose fsync failed gets a spool error and no row,
    and the others of its batch are recorded."""
    synced: list[str] = []

    def durable(uid: str) -> object:
        if uid.endswith(".66"):
            raise OSError(5, "Input/output error")
        synced.append(uid)
        return None

    metas = [dataclasses.replace(BASE, sop_instance_uid=f"1.2.3.4.{i}") for i in (1, 2, 66, 3)]
    receipts = [dataclasses.replace(_receipt(tmp_path, m), durable=lambda uid=m.sop_instance_uid: durable(uid))
                for m in metas]
    results = _concurrently(GroupCommitter(any_sessions), receipts)
    assert [bool(r.spool_error) for r in results] == [False, False, True, False]
    assert "Input/output error" in results[2].spool_error
    with any_sessions() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
    assert stored == {"1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"} == set(synced) & stored


def test_a_sender_whose_study_another_sender_claimed_meanwhile_is_refused_at_commit(
        any_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """Ownership is checked again in the commit's own transaction: a STOW-RS sender's instance for a study
    another sender made since the landing's check is not recorded, and is answered "not owned"."""
    committer = GroupCommitter(any_sessions)
    first = dataclasses.replace(_receipt(tmp_path, BASE), sender="edge-a")
    assert committer.record(first).changed  # edge-a makes the study
    late = dataclasses.replace(_receipt(tmp_path, dataclasses.replace(BASE, sop_instance_uid="1.2.3.4.7")),
                               sender="edge-b")
    refused = committer.record(late)
    assert (refused.changed, refused.not_owned, refused.collision) == (False, True, NOT_OWNED)
    with any_sessions() as session:
        assert set(session.scalars(select(Instance.sop_instance_uid))) == {BASE.sop_instance_uid}
