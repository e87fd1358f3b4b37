"""The re-send policy: unchanged instances change nothing; new or changed ones make a new result version."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import session_scope
from dicomnode.inference.registry import load_manifests
from dicomnode.jobs.models import Job, Series, Study
from dicomnode.jobs.status import StudyState
from dicomnode.settings import Rule
from dicomnode.store.completion import InstalledModels, SeriesPlan, _apply
from dicomnode.store.index import InstanceMeta, record_instance
from tests.support.peers import REPO


def _usable(headers: object) -> None:
    """Every series is usable here: these tests route by hand."""



def meta(sop: str) -> InstanceMeta:
    return InstanceMeta(study_uid="1.2.3", series_uid="1.2.3.4", sop_instance_uid=sop,
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                        transfer_syntax_uid="1.2.840.10008.1.2.1", modality="MR", series_number=3,
                        series_description="T1", patient_id="P1", patient_name="DOE^JANE")


def receive(sessions: sessionmaker[Session], sop: str, sha: str) -> bool:
    with session_scope(sessions) as session:
        return record_instance(session, meta(sop), path=f"/spool/{sop}", sha256=sha, size=1, calling_ae="PACS")


def route(sessions: sessionmaker[Session]) -> list[tuple[int, int]]:
    manifests = load_manifests(REPO / "models")
    rule = Rule(name="r", model="deepbet", match={})
    with session_scope(sessions) as session:
        study = session.scalars(select(Study)).one()
        series = session.scalars(select(Series)).one()
        _apply(session, study, [SeriesPlan(series.id, [rule], "matched")],
               InstalledModels({m.id: m.version for m in manifests.values()}, _usable), 1)
    with sessions() as session:
        return [(j.id, j.revision) for j in session.scalars(select(Job).order_by(Job.id))]


def study_state(sessions: sessionmaker[Session]) -> StudyState:
    with sessions() as session:
        return session.scalars(select(Study.state)).one()


def test_unchanged_resend_changes_nothing(sessions: sessionmaker[Session]) -> None:
    assert receive(sessions, "1.2.3.4.1", "aaa")
    assert route(sessions) == [(1, 1)]
    assert not receive(sessions, "1.2.3.4.1", "aaa")
    assert study_state(sessions) is StudyState.ROUTED
    assert route(sessions) == [(1, 1)]


def test_changed_instance_makes_a_new_revision(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.4.1", "aaa")
    route(sessions)
    assert receive(sessions, "1.2.3.4.1", "bbb")
    assert study_state(sessions) is StudyState.RECEIVING
    assert route(sessions) == [(1, 1), (2, 2)]


def test_added_instance_makes_a_new_revision_once(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.4.1", "aaa")
    route(sessions)
    receive(sessions, "1.2.3.4.2", "ccc")
    receive(sessions, "1.2.3.4.3", "ddd")  # same burst: still revision 2
    assert route(sessions) == [(1, 1), (2, 2)]


def test_instances_before_routing_do_not_bump_the_revision(sessions: sessionmaker[Session]) -> None:
    for i in range(3):
        receive(sessions, f"1.2.3.4.{i}", f"sha{i}")
    assert route(sessions) == [(1, 1)]
