"""The operator's commands (in the test's process, as the console script runs them; one test runs the
console script itself): each does its job, and each has an error case that answers
in one sentence with a non-zero exit code and no traceback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import config_store
from dicomnode.audit.models import AuditRecord
from dicomnode.cli import context
from dicomnode.db import session_scope
from dicomnode.jobs.models import Job, Series, Study
from dicomnode.jobs.repository import claim, enqueue, transition
from dicomnode.jobs.status import JobStatus
from dicomnode.settings import Settings
from tests.support.children import dies_with_us
from tests.support.cli import run_cli
from tests.support.logs import stageless
from tests.support.net import free_port
from tests.support.peers import REPO, dcmqrscp, storescp
from tests.support.synthetic import make_series, write_series


def _env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "DICOMNODE_DATA_DIR": str(settings.data_dir), "DICOMNODE_MIN_FREE_DISK_MB": "1",
           "COLUMNS": "400"}  # a table row on one line
    env.pop("DICOMNODE_CONFIG", None)
    return env


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``dicomnode ARGS`` on ``settings``' data directory, in this process (:func:`tests.support.cli.run_cli`)."""
    done = run_cli(args, _env(settings))
    assert not stageless(done.stderr), done.stderr  # every line the node logs names its stage
    return done


@pytest.mark.usefixtures("sessions")
def test_the_console_script_runs_a_command(settings: Settings) -> None:
    """What the in-process runs above stand for: ``python -m dicomnode`` and the ``dicomnode`` entry point,
    real processes, give the same answer, exit status and one-sentence error."""
    for command in ([sys.executable, "-m", "dicomnode"], [str(Path(sys.executable).parent / "dicomnode")]):
        done = subprocess.run([*command, "job", "show", "999"], capture_output=True, text=True,
                              env=_env(settings), cwd=REPO, timeout=120, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (
            (mine := cli(settings, "job", "show", "999")).returncode, mine.stdout, mine.stderr), command
        one_sentence(done, 1, "no job 999")


def one_sentence(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.startswith("dicomnode: ") and done.stderr.count("\n") == 1, done.stderr
    assert text in done.stderr, done.stderr


def changes(sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    with sessions() as session:
        return [json.loads(r.detail) | {"actor": r.actor} for r in session.scalars(
            select(AuditRecord).where(AuditRecord.event == "config_changed").order_by(AuditRecord.id))]


def test_init_writes_a_commented_config_and_the_database(settings: Settings, tmp_path: Path) -> None:
    target = tmp_path / "node.toml"
    done = cli(settings, "init", str(target))
    assert done.returncode == 0, done.stderr
    assert "# The PACS" in target.read_text() and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert (settings.data_dir / "dicomnode.db").is_file()
    one_sentence(cli(settings, "init", str(target)), 1, "exists already; pass --force")
    assert cli(settings, "init", str(target), "--force").returncode == 0


def test_peers_add_list_remove(settings: Settings, sessions: sessionmaker[Session]) -> None:
    assert cli(settings, "peers", "add", "MOD1", "10.1.2.0/24", "104").returncode == 0
    listed = cli(settings, "peers", "list")
    assert "MOD1" in listed.stdout and "10.1.2.0/24" in listed.stdout
    assert cli(settings, "peers", "remove", "MOD1").returncode == 0
    assert "MOD1" not in cli(settings, "peers", "list").stdout
    assert [(c["name"], c["before"] is None, c["after"] is None) for c in changes(sessions)] == [
        ("MOD1", True, False), ("MOD1", False, True)]
    one_sentence(cli(settings, "peers", "remove", "MOD1"), 1, "no peer MOD1 was added at run time")
    one_sentence(cli(settings, "peers", "add", "WAY-TOO-LONG-AE-TITLE", "h", "104"), 2, "ae_title")
    bad_port = cli(settings, "peers", "add", "X", "h", "notaport")
    assert bad_port.returncode == 2 and "Traceback" not in bad_port.stderr and "port" in bad_port.stderr


def test_peers_add_keeps_the_certificate_binding(settings: Settings, sessions: sessionmaker[Session]) -> None:
    fingerprint = ":".join(["AB"] * 32)
    done = cli(settings, "peers", "add", "MTLS1", "10.1.2.3", "104", "--tls-subject-cn", "mtls1.example.org",
               "--tls-sha256", fingerprint)
    assert done.returncode == 0, done.stderr
    with sessions() as session:
        (peer,) = config_store.list_peers(session)
    assert (peer.tls_subject_cn, peer.tls_sha256) == ("mtls1.example.org", "ab" * 32)
    one_sentence(cli(settings, "peers", "add", "MTLS2", "10.1.2.3", "104", "--tls-sha256", "not-hex"), 2,
                 "tls_sha256")


def test_commands_need_a_database(settings: Settings) -> None:
    one_sentence(cli(settings, "peers", "list"), 1, "run `dicomnode init`")


def test_destinations_add_echo_send_remove(settings: Settings, sessions: sessionmaker[Session],
                                          tmp_path: Path) -> None:
    files = write_series(make_series(n_slices=3, rows=8, columns=8), tmp_path / "series")
    (tmp_path / "series" / "notes.txt").write_text("not DICOM")
    with storescp(tmp_path / "received", aet="ARCHIVE") as port:
        assert cli(settings, "destinations", "add", "archive", "ARCHIVE", "127.0.0.1", str(port),
                   "--send", "SEG").returncode == 0
        assert "archive" in cli(settings, "destinations", "list").stdout
        echoed = cli(settings, "destinations", "echo", "archive")
        assert echoed.returncode == 0 and "0x0000 in" in echoed.stdout
        sent = cli(settings, "send", str(tmp_path / "series"), "--to", "archive")
        assert sent.returncode == 0, sent.stderr
        assert "3 of 3 instance(s) stored" in sent.stdout and "1 non-DICOM file(s) skipped" in sent.stdout
    received = sorted(str(dcmread(p).SOPInstanceUID) for p in (tmp_path / "received").iterdir())
    assert received == sorted(str(dcmread(p).SOPInstanceUID) for p in files)
    assert cli(settings, "destinations", "remove", "archive").returncode == 0
    assert [c["kind"] for c in changes(sessions)] == ["destination", "destination"]
    one_sentence(cli(settings, "destinations", "echo", "archive"), 1, "no destination archive")
    one_sentence(cli(settings, "destinations", "echo", f"GONE@127.0.0.1:{free_port()}"), 1, "no association")
    one_sentence(cli(settings, "send", str(tmp_path / "absent"), "--to", "X@127.0.0.1:104"), 1, "does not exist")
    one_sentence(cli(settings, "destinations", "add", "pacs", "X", "h", "104"), 1, "comes from the configuration")
    one_sentence(cli(settings, "destinations", "add", "r", "R", "h", "104", "--send", "PNG"), 2, "send")


@pytest.mark.usefixtures("sessions")
def test_rules_list_shows_the_demonstration_models_defaults_only_with_demo_models(settings: Settings) -> None:
    """README: the demonstration models are installed but route nothing unless the site turns them on."""
    def rules(demo: str) -> list[tuple[str, str]]:
        listed = run_cli(["rules", "list"], {**_env(settings), "DICOMNODE_DEMO_MODELS": demo}).stdout
        return [(cells[1].strip(), cells[5].strip()) for line in listed.splitlines()
                if len(cells := line.split("\u2502")) == 7]
    assert rules("false") == [("mr-t1-brain", "in force")]
    assert rules("true") == [("ct-chest-nodule-demo", "in force"), ("cxr-demo", "in force"),
                             ("mr-t1-brain", "in force")]


def test_rules_list_and_test(settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    listed = cli(settings, "rules", "list").stdout
    assert "mr-t1-brain" in listed and "in force" in listed
    assert cli(settings, "rules", "add", "chest", "cxr-demo").returncode == 0
    listed = cli(settings, "rules", "list").stdout
    (chest,) = [line for line in listed.splitlines() if "chest" in line]
    assert "suspended: model cxr-demo is a demonstration model" in chest
    write_series(make_series(n_slices=2, rows=8, columns=8, series_description="T1 3D sag"), tmp_path / "t1")
    write_series(make_series(n_slices=2, rows=8, columns=8, series_description="LOCALIZER"), tmp_path / "loc")
    tested = cli(settings, "rules", "test", str(tmp_path / "t1"), str(tmp_path / "loc"))
    assert tested.returncode == 0, tested.stderr
    assert "rule mr-t1-brain matched: runs deepbet" in tested.stdout
    assert "SeriesDescription does not match" in tested.stdout and "nothing" in tested.stdout
    assert "rule chest matched, but suspended: model cxr-demo is a demonstration model" in tested.stdout
    assert "cxr-demo" not in tested.stdout.replace("model cxr-demo is", "")  # matched, and runs nothing
    one_sentence(cli(settings, "rules", "test", str(tmp_path / "absent")), 1, "does not exist")
    (tmp_path / "empty").mkdir()
    one_sentence(cli(settings, "rules", "test", str(tmp_path / "empty")), 1, "no DICOM file")


def _dead_and_queued(sessions: sessionmaker[Session]) -> tuple[int, int]:
    with session_scope(sessions) as session:
        series = [Series(series_uid=f"1.2.3.{i}", study=Study(study_uid=f"1.2.{i}", calling_ae="PACS"))
                  for i in range(2)]
        session.add_all(series)
        session.flush()
        jobs = [enqueue(session, s, "r", "deepbet", "1") for s in series]
        ids = [j.id for j in jobs if j is not None]
    assert claim(sessions, "w", 60) is not None
    with session_scope(sessions) as session:
        transition(session, ids[0], JobStatus.RUNNING, JobStatus.DEAD_LETTER, "association rejected", worker_id="w")
    return ids[0], ids[1]


def test_jobs_show_retry_cancel(settings: Settings, sessions: sessionmaker[Session]) -> None:
    dead, queued = _dead_and_queued(sessions)
    listed = cli(settings, "jobs", "--state", "dead_letter")
    assert listed.returncode == 0 and "association rejected" in listed.stdout and "1.2.1" not in listed.stdout
    shown = cli(settings, "job", "show", str(dead))
    assert shown.returncode == 0 and "dead_letter" in shown.stdout
    one_sentence(cli(settings, "retry", str(queued)), 1, f"job {queued} is queued, not dead_letter")
    retried, cancelled = cli(settings, "retry", str(dead)), cli(settings, "cancel", str(queued))
    assert (retried.returncode, retried.stdout) == (0, f"job {dead} queued again\n")
    assert (cancelled.returncode, cancelled.stdout) == (0, f"job {queued} cancelled\n")
    with sessions() as session:
        assert session.get(Job, dead).status is JobStatus.QUEUED  # type: ignore[union-attr]
        assert session.get(Job, queued).status is JobStatus.DEAD_LETTER  # type: ignore[union-attr]
        moved = [(r.actor, json.loads(r.detail)["job_id"], json.loads(r.detail)["reason"]) for r in session.scalars(
            select(AuditRecord).where(AuditRecord.actor != "w", AuditRecord.detail.contains("by operator"))
            .order_by(AuditRecord.id))]
    user = context.operator()  # the operating-system user: who moved the jobs, in the audit trail
    assert moved == [(user, dead, f"retried by operator {user}"), (user, queued, f"cancelled by operator {user}")]
    for missing in ("999", "0", str(2**63)):  # none such, none ever, none a database can hold
        for command in (("job", "show"), ("retry",), ("cancel",)):
            one_sentence(cli(settings, *command, missing), 1, f"no job {missing}")
    bad_state = cli(settings, "jobs", "--state", "exploded")
    assert bad_state.returncode == 2 and "Traceback" not in bad_state.stderr


@pytest.mark.parametrize("args", [["peers"], ["nonsense-command"]])
def test_usage_errors_have_no_traceback(settings: Settings, args: list[str]) -> None:
    done = cli(settings, *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_a_group_without_its_command_shows_the_group_s_help() -> None:
    """`dicomnode peers` alone: the group's usage and its commands (as `--help` shows them), exit status 2."""
    done, helped = run_cli(["peers"]), run_cli(["peers", "--help"])
    assert done.returncode == 2 and helped.returncode == 0 and done.stderr.strip() == ""  # no empty complaint
    assert "Usage: dicomnode peers [OPTIONS] COMMAND [ARGS]..." in done.stdout
    assert done.stdout.strip() == helped.stdout.strip()
    assert all(f" {command} " in done.stdout for command in ("add", "list", "remove"))


def test_web_serves_the_admin_api_alone_and_stops_on_sigterm(settings: Settings, sessions: sessionmaker[Session],
                                                             tmp_path: Path) -> None:
    import signal
    import urllib.request

    from tests.support.net import port_open, wait_for

    port = free_port()
    env = {**os.environ, "DICOMNODE_DATA_DIR": str(settings.data_dir), "DICOMNODE_MIN_FREE_DISK_MB": "1",
           "DICOMNODE_ADMIN_PORT": str(port)}
    env.pop("DICOMNODE_CONFIG", None)
    with open(tmp_path / "web.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "dicomnode", "web"], cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, **dies_with_us())
    try:
        wait_for(lambda: process.poll() is None and port_open(port), timeout=60, msg="dicomnode web listening")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as rsp:
            ready = json.loads(rsp.read())
        assert ready["ready"] is True and ready["checks"]["models"]["detail"] == "this process runs no models"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    no_port = cli(settings, "web")
    assert no_port.returncode == 2 and "Traceback" not in no_port.stderr


def test_echo_answers_for_the_pacs(settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """``dicomnode echo``: the PACS's answer; no PACS configured is a usage error; a PACS that is not
    there, or that rejects the node's association, a failure that says which (and the rejection's reason),
    in one sentence, without pynetdicom's own lines."""
    one_sentence(cli(settings, "echo"), 2, "no PACS configured (DICOMNODE_PACS)")
    env = _env(settings)
    with storescp(tmp_path / "pacs", aet="PACS") as port:
        done = run_cli(["echo"], {**env, "DICOMNODE_PACS": f"PACS@127.0.0.1:{port}"})
        assert (done.returncode, done.stdout) == (0, f"C-ECHO PACS@127.0.0.1:{port}: 0x0000\n"), done.stderr
    gone = run_cli(["echo"], {**env, "DICOMNODE_PACS": f"PACS@127.0.0.1:{port}"})  # storescp has stopped
    one_sentence(gone, 1, f"C-ECHO PACS@127.0.0.1:{port}: no association: no connection to 127.0.0.1:{port}")
    with dcmqrscp(tmp_path / "archive", aet="ARCHIVE") as port:  # it knows itself as ARCHIVE, not PACS
        rejected = run_cli(["echo"], {**env, "DICOMNODE_PACS": f"PACS@127.0.0.1:{port}"})
    one_sentence(rejected, 1, f"C-ECHO PACS@127.0.0.1:{port}: no association: Rejected Permanent by the "
                              "Service User: Called AE title not recognised")


def test_purge_says_how_many_studies_it_purged(settings: Settings, sessions: sessionmaker[Session]) -> None:
    done = cli(settings, "purge")
    assert (done.returncode, done.stdout) == (0, "purged 0 studies\n"), done.stderr


def test_hash_password_reads_a_pipe_and_refuses_a_short_password(settings: Settings) -> None:
    from dicomnode.admin.auth import check_password

    done = run_cli(["admin", "hash-password"], _env(settings), stdin="correct horse battery\n")
    assert done.returncode == 0, done.stderr
    assert check_password("correct horse battery", done.stdout.strip())
    one_sentence(run_cli(["admin", "hash-password"], _env(settings), stdin="short\n"), 2,
                 "use a password of at least 12 characters")
