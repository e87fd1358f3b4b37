"""The completeness sweep reads a quiet study's headers ahead, and reads a replaced file again."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from concurrent import futures
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.db import session_scope, utcnow
from dicomnode.inference.registry import load_manifests
from dicomnode.inference.volume import check_usable
from dicomnode.jobs.models import Instance, Series, Study
from dicomnode.jobs.status import StudyState
from dicomnode.settings import Rule
from dicomnode.store import completion
from dicomnode.store.completion import HeaderCache, InstalledModels, sweep
from dicomnode.store.index import InstanceMeta, record_instance
from tests.support.peers import REPO
from tests.support.synthetic import make_series, write_series

IDLE = 10.0
RULES = [Rule(name="mr", model="deepbet", match={"Modality": "^MR$"})]


@pytest.fixture
def manifests() -> InstalledModels:
    return InstalledModels({m.id: m.version for m in load_manifests(REPO / "models").values()}, check_usable)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def receive_series(sessions: sessionmaker[Session], folder: Path) -> list[Path]:
    series = make_series(n_slices=4, rows=8, columns=8)
    paths = write_series(series, folder)
    with session_scope(sessions) as session:
        for ds, path in zip(series, paths, strict=True):
            meta = InstanceMeta(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                                sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, modality="MR", series_number=7,
                                series_description="T1", patient_id="P1", patient_name="SYNTHETIC^PHANTOM")
            record_instance(session, meta, path=str(path), sha256=_sha(path), size=path.stat().st_size,
                            calling_ae="PACS")
    return paths


def quiet_for(sessions: sessionmaker[Session], seconds: float) -> None:
    with session_scope(sessions) as session:
        session.execute(update(Study).values(last_received_at=utcnow() - dt.timedelta(seconds=seconds)))


def state(sessions: sessionmaker[Session]) -> StudyState:
    with sessions() as session:
        return session.scalars(select(Study.state)).one()


def rewrite_as_ct(path: Path) -> None:
    """The same instance with another content (Modality CT), written over the spooled file."""
    ds = make_series(n_slices=1, rows=8, columns=8)[0]
    ds.Modality = "CT"
    ds.save_as(path, enforce_file_format=True)


def test_headers_are_read_ahead_and_used_when_the_study_is_complete(
        sessions: sessionmaker[Session], manifests: InstalledModels, tmp_path: Path) -> None:
    paths = receive_series(sessions, tmp_path / "spool")
    cache = HeaderCache()
    quiet_for(sessions, IDLE * 0.6)  # quiet for more than half the idle time: read ahead, not judged
    assert sweep(sessions, IDLE, RULES, manifests, cache) == 0
    assert [len(entries) for entries in cache.studies.values()] == [len(paths)]
    assert state(sessions) == StudyState.RECEIVING
    rewrite_as_ct(paths[0])  # behind the database's back: the cached header (same recorded SHA-256) is used
    quiet_for(sessions, IDLE + 1)
    assert sweep(sessions, IDLE, RULES, manifests, cache) == 1
    assert state(sessions) == StudyState.ROUTED
    assert cache.studies == {}  # routed: nothing kept


def test_a_replaced_file_is_read_again(sessions: sessionmaker[Session], manifests: InstalledModels,
                                       tmp_path: Path) -> None:
    paths = receive_series(sessions, tmp_path / "spool")
    cache = HeaderCache()
    quiet_for(sessions, IDLE * 0.6)
    sweep(sessions, IDLE, RULES, manifests, cache)
    rewrite_as_ct(paths[0])
    with session_scope(sessions) as session:  # as the receiver records a changed instance
        session.execute(update(Instance).where(Instance.path == str(paths[0])).values(sha256=_sha(paths[0])))
    quiet_for(sessions, IDLE + 1)
    assert sweep(sessions, IDLE, RULES, manifests, cache) == 1
    assert state(sessions) == StudyState.NO_MATCH  # the CT header was read: the MR rule does not match


def test_without_a_cache_nothing_is_read_before_the_study_is_complete(
        sessions: sessionmaker[Session], manifests: InstalledModels, tmp_path: Path) -> None:
    paths = receive_series(sessions, tmp_path / "spool")
    quiet_for(sessions, IDLE * 0.6)
    assert sweep(sessions, IDLE, RULES, manifests) == 0
    rewrite_as_ct(paths[0])
    quiet_for(sessions, IDLE + 1)
    assert sweep(sessions, IDLE, RULES, manifests) == 1
    assert state(sessions) == StudyState.NO_MATCH


def test_a_study_complete_before_the_next_sweep_is_judged_when_complete_and_not_before(
        sessions: sessionmaker[Session], manifests: InstalledModels, tmp_path: Path) -> None:
    receive_series(sessions, tmp_path / "spool")
    quiet_for(sessions, IDLE - 1.0)  # complete in a second
    assert sweep(sessions, IDLE, RULES, manifests, HeaderCache(), wait_seconds=0.1) == 0  # not before the next
    assert sweep(sessions, IDLE, RULES, manifests, HeaderCache(), wait_seconds=2.0) == 1
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.state == StudyState.ROUTED
        assert study.completed_at is not None
        assert study.completed_at - study.last_received_at >= dt.timedelta(seconds=IDLE)


def test_headers_read_ahead_are_kept_while_the_study_receives_more(
        sessions: sessionmaker[Session], manifests: InstalledModels, tmp_path: Path) -> None:
    receive_series(sessions, tmp_path / "spool")
    cache = HeaderCache()
    quiet_for(sessions, IDLE * 0.6)
    sweep(sessions, IDLE, RULES, manifests, cache)
    quiet_for(sessions, 0)  # another instance arrived: not quiet any more, still receiving
    assert sweep(sessions, IDLE, RULES, manifests, cache) == 0
    assert [len(entries) for entries in cache.studies.values()] == [4]  # not read again at the next quiet spell


def test_workers_are_woken_for_each_study_before_the_sweep_waits_for_the_next(
        sessions: sessionmaker[Session], manifests: InstalledModels, tmp_path: Path) -> None:
    receive_series(sessions, tmp_path / "a")
    receive_series(sessions, tmp_path / "b")
    with session_scope(sessions) as session:
        first, second = session.scalars(select(Study.id).order_by(Study.id)).all()
        session.execute(update(Study).where(Study.id == first).values(
            last_received_at=utcnow() - dt.timedelta(seconds=IDLE + 1)))
        session.execute(update(Study).where(Study.id == second).values(
            last_received_at=utcnow() - dt.timedelta(seconds=IDLE - 1)))
    seen: list[list[StudyState]] = []

    def on_routed() -> None:
        with sessions() as session:
            seen.append(list(session.scalars(select(Study.state).order_by(Study.id))))

    assert sweep(sessions, IDLE, RULES, manifests, HeaderCache(), wait_seconds=2.0, on_routed=on_routed) == 2
    assert seen == [[StudyState.ROUTED, StudyState.RECEIVING], [StudyState.ROUTED, StudyState.ROUTED]]


def test_a_study_nothing_matches_is_audited_as_not_routed_by_the_router(
        sessions: sessionmaker[Session], manifests: InstalledModels, tmp_path: Path) -> None:
    receive_series(sessions, tmp_path / "spool")
    quiet_for(sessions, IDLE + 1)
    ct_only = [Rule(name="ct", model="deepbet", match={"Modality": "^CT$"})]
    assert sweep(sessions, IDLE, ct_only, manifests) == 1
    with sessions() as session:
        (row,) = session.scalars(select(AuditRecord).where(AuditRecord.event == "study_not_routed")).all()
        study = session.scalars(select(Study)).one()
    assert (row.actor, row.outcome, row.study_uid) == ("router", "success", study.study_uid)
    assert json.loads(row.detail)["reason"] == study.state_reason
    assert study.state_reason.startswith("nothing to do: series 7: ")


def test_a_matched_series_that_cannot_be_used_is_audited_as_skipped_with_its_study_and_patient(
        sessions: sessionmaker[Session], manifests: InstalledModels, tmp_path: Path) -> None:
    """A series a rule matches but the model cannot take (here: one slice tilted away from the others) is
    skipped, and its audit row names the series, the study and the patient, with the reason."""
    paths = receive_series(sessions, tmp_path / "spool")
    tilted = make_series(n_slices=1, rows=8, columns=8)[0]
    kept = dcmread(paths[1])
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SeriesDescription", "Modality"):
        setattr(tilted, keyword, kept.data_element(keyword).value)
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal, in an axial series
    tilted.save_as(paths[1], enforce_file_format=True)
    quiet_for(sessions, IDLE + 1)
    assert sweep(sessions, IDLE, RULES, manifests) == 1
    with sessions() as session:
        (row,) = session.scalars(select(AuditRecord).where(AuditRecord.event == "series_skipped")).all()
        study = session.scalars(select(Study)).one()
    assert (row.actor, row.outcome, row.study_uid, row.patient_id) == ("router", "minor_failure", study.study_uid, "P1")
    detail = json.loads(row.detail)
    assert detail["series_uid"] == str(kept.SeriesInstanceUID) and "orientation" in detail["reason"]


def test_the_sweep_counts_every_study_it_routes(
        sessions: sessionmaker[Session], manifests: InstalledModels, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        receive_series(sessions, tmp_path / name)
    quiet_for(sessions, IDLE + 1)
    assert sweep(sessions, IDLE, RULES, manifests) == 3
    with sessions() as session:
        assert set(session.scalars(select(Study.state))) == {StudyState.ROUTED}


class _Clock:
    """``time`` for dicomnode.store.completion: ``sleep`` moves ``time()`` on, and is counted."""

    def __init__(self) -> None:
        self.now = utcnow().timestamp()
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_study_short_of_its_counts_is_polled_until_the_sweeps_deadline_and_not_past_it(
        sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The query peer said 9 instances, 4 have come and more are coming: the tallies are read again every
    COUNTS_POLL_SECONDS up to the sweep's wait, and the sweep goes on at its deadline, not a poll later."""
    receive_series(sessions, tmp_path / "spool")
    with session_scope(sessions) as session:
        study = session.scalars(select(Study)).one()
        study.pacs_instances = 9
        study.pacs_asked_at = study.last_received_at + dt.timedelta(seconds=1)  # asked since: nothing to wait for
    clock = _Clock()
    monkeypatch.setattr(completion, "time", clock)

    def ask(study_id: int) -> futures.Future[None]:
        raise AssertionError(f"study {study_id}'s counts were asked again")

    decided, known = completion._by_counts(sessions, ask, quiet_seconds=60, wait_seconds=0.11)
    assert (decided, len(known)) == (set(), 1)
    # slept at 0, 0.025, 0.05 and 0.075 s; at 0.1 s the next poll would end past 0.11 s (margins of 10 ms:
    # nothing here rests on a float's last bit)
    assert clock.slept == [completion.COUNTS_POLL_SECONDS] * 4


@pytest.mark.parametrize(("pacs", "decided"), [(4, True), (9, False)])
def test_a_study_whose_counts_match_is_decided_at_once_and_one_gone_quiet_is_not_polled(
        sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pacs: int,
        decided: bool) -> None:
    """4 of 4 instances, counted after the last came: complete by counts, no poll. 4 of 9, but nothing
    for longer than quiet_seconds: not arriving any more, so not polled either (the idle timer judges it)."""
    receive_series(sessions, tmp_path / "spool")
    quiet_for(sessions, 0 if decided else 120)
    with session_scope(sessions) as session:
        study = session.scalars(select(Study)).one()
        study.pacs_instances = pacs
        study.pacs_asked_at = study.last_received_at + dt.timedelta(seconds=1)
        session.execute(update(Series).values(pacs_instances=pacs))  # the series' count, as the peer gave it
        study_id = study.id
    clock = _Clock()
    monkeypatch.setattr(completion, "time", clock)
    found = completion._by_counts(sessions, lambda _: futures.Future(), quiet_seconds=60, wait_seconds=1.0)
    assert found == ({study_id} if decided else set(), {study_id}) and clock.slept == []


def test_a_study_decided_by_its_counts_ends_the_polling_for_the_others(
        sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One study complete by counts is routed by this sweep now, not after the others' polling."""
    receive_series(sessions, tmp_path / "a")
    receive_series(sessions, tmp_path / "b")
    with session_scope(sessions) as session:
        complete, arriving = session.scalars(select(Study).order_by(Study.id)).all()
        for study, pacs in ((complete, 4), (arriving, 9)):
            study.pacs_instances = pacs
            study.pacs_asked_at = study.last_received_at + dt.timedelta(seconds=1)
            session.execute(update(Series).where(Series.study_id == study.id).values(pacs_instances=pacs))
        ids = complete.id, arriving.id
    clock = _Clock()
    monkeypatch.setattr(completion, "time", clock)
    found = completion._by_counts(sessions, lambda _: futures.Future(), quiet_seconds=60, wait_seconds=1.0)
    assert found == ({ids[0]}, set(ids)) and clock.slept == []
