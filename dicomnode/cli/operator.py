"""The operator's commands (typer, rich output): init, peers, destinations, rules, jobs, send.

They call the same functions as the admin API and the console, and are audited the same way, with the
operating-system user as the actor. Errors are one sentence on standard error and a non-zero exit code,
never a traceback.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import config_store
from dicomnode.admin import job_actions as jobs
from dicomnode.admin.rule_tester import file_headers, judge
from dicomnode.admin.schemas import JOB_ID_MAX
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record
from dicomnode.cli import context
from dicomnode.cli.context import Failure
from dicomnode.db import make_engine, make_sessionmaker, session_scope
from dicomnode.jobs.status import JobStatus
from dicomnode.resources import example_config
from dicomnode.settings import Destination, Peer, Rule, Settings

COMMANDS = frozenset({"init", "peers", "destinations", "rules", "jobs", "job", "retry", "cancel", "send"})
EXAMPLE = example_config()

app = typer.Typer()  # its commands join the root app of cli/main.py
peers_app = typer.Typer(no_args_is_help=True, help="peers allowed to call in")
destinations_app = typer.Typer(no_args_is_help=True, help="where results go")
rules_app = typer.Typer(no_args_is_help=True, help="routing rules")
job_app = typer.Typer(no_args_is_help=True, help="one job")
app.add_typer(peers_app, name="peers")
app.add_typer(destinations_app, name="destinations")
app.add_typer(rules_app, name="rules")
app.add_typer(job_app, name="job")


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _sessions(ctx: typer.Context) -> sessionmaker[Session]:
    settings = context.settings(ctx)
    if not settings.database_url and not (settings.data_dir / "dicomnode.db").exists():
        raise Failure(f"no database at {settings.data_dir / 'dicomnode.db'}: run `dicomnode init` or "
                      "`dicomnode db upgrade` first")
    return make_sessionmaker(make_engine(settings.db_url))


@app.command()
def init(ctx: typer.Context, path: Annotated[Path, typer.Argument(help="configuration file to write")] = Path(
        "dicomnode.toml"), force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False) -> None:
    """Write a commented configuration file and create the database it names."""
    from dicomnode.migrate import upgrade

    if path.exists() and not force:
        raise Failure(f"{path} exists already; pass --force to overwrite it")
    if not EXAMPLE.is_file():
        raise Failure(f"the commented example {EXAMPLE} is missing from this installation")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(EXAMPLE.read_text())
    settings = Settings.load(path)  # DICOMNODE_* variables still win, as for every command
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    upgrade(settings.db_url)
    _out().print(f"wrote {path}; database ready at {settings.db_url.split('///')[-1]}")


# -- peers ------------------------------------------------------------------------------------------
@peers_app.command("list")
def peers_list(ctx: typer.Context) -> None:
    """The peers from the configuration and those added at run time."""
    with _sessions(ctx)() as session:
        added = config_store.list_peers(session)
    table = Table("AE title", "host", "port", "TLS", "query", "source")
    configured = [(p, "configuration") for p in context.settings(ctx).known_peers]
    for peer, source in configured + [(p, "added") for p in added]:
        table.add_row(peer.ae_title, peer.host, str(peer.port), "yes" if peer.tls else "no",
                      f"yes ({peer.retrieve})" if peer.query else "no", source)
    _out().print(table)


@peers_app.command("add")
def peers_add(ctx: typer.Context, ae_title: str, host: str, port: int,
              tls: Annotated[bool, typer.Option(help="connect with DICOM TLS")] = False,
              tls_subject_cn: Annotated[str | None, typer.Option(
                  help="mTLS: the subject CN the peer's client certificate must carry")] = None,
              tls_sha256: Annotated[str | None, typer.Option(
                  help="mTLS: the SHA-256 fingerprint its client certificate must have")] = None,
              query: Annotated[bool, typer.Option(
                  help="ask it (C-FIND) for studies' instance counts and for priors")] = False,
              retrieve: Annotated[str, typer.Option(
                  help="how priors are fetched from it: get (C-GET) or move (C-MOVE to the node)")] = "get") -> None:
    """Allow AE_TITLE at HOST (address, network or name) to call in, at once."""
    if retrieve not in ("get", "move"):
        raise Failure(f"--retrieve must be get or move, not {retrieve[:20]!r}")
    peer = Peer(ae_title=ae_title, host=host, port=port, tls=tls, tls_subject_cn=tls_subject_cn,
                tls_sha256=tls_sha256, query=query, retrieve=retrieve)  # type: ignore[arg-type]
    with session_scope(_sessions(ctx)) as session:
        config_store.put_peer(session, peer, user=context.operator(), address="cli")
    _out().print(f"peer {peer} saved: it may call in now")


@peers_app.command("remove")
def peers_remove(ctx: typer.Context, ae_title: str) -> None:
    """Refuse AE_TITLE from now on (a peer added at run time)."""
    with session_scope(_sessions(ctx)) as session:
        if not config_store.delete_peer(session, ae_title, user=context.operator(), address="cli"):
            raise Failure(f"no peer {ae_title} was added at run time (configured peers live in the configuration)")
    _out().print(f"peer {ae_title} removed")


# -- destinations -----------------------------------------------------------------------------------
@destinations_app.command("list")
def destinations_list(ctx: typer.Context) -> None:
    """Where results go: the PACS, configured destinations and those added at run time."""
    table = Table("name", "AE title", "host", "port", "TLS", "sends")
    for d in config_store.runtime_destinations(context.settings(ctx), _sessions(ctx)):
        table.add_row(d.name, d.ae_title, d.host, str(d.port), "yes" if d.tls else "no", ", ".join(d.send))
    _out().print(table)


@destinations_app.command("add")
def destinations_add(ctx: typer.Context, name: str, ae_title: str, host: str, port: int,
                     tls: Annotated[bool, typer.Option(help="connect with DICOM TLS")] = False,
                     send: Annotated[str, typer.Option(help="results it takes: SEG, SR or SEG,SR")] = "SEG,SR"
                     ) -> None:
    """Send results to NAME (AE_TITLE at HOST:PORT) from the next job on."""
    if name == config_store.PACS_DESTINATION:
        raise Failure("the PACS destination comes from the configuration (pacs)")
    destination = Destination.model_validate({"name": name, "ae_title": ae_title, "host": host, "port": port,
                                              "tls": tls, "send": [k.strip().upper() for k in send.split(",")]})
    with session_scope(_sessions(ctx)) as session:
        config_store.put_destination(session, destination, user=context.operator(), address="cli")
    _out().print(f"destination {name} saved: it gets the next results")


@destinations_app.command("remove")
def destinations_remove(ctx: typer.Context, name: str) -> None:
    """Stop sending results to NAME (a destination added at run time)."""
    with session_scope(_sessions(ctx)) as session:
        if not config_store.delete_destination(session, name, user=context.operator(), address="cli"):
            raise Failure(f"no destination {name} was added at run time")
    _out().print(f"destination {name} removed")


def _destination(ctx: typer.Context, name: str) -> Destination:
    found = [d for d in config_store.runtime_destinations(context.settings(ctx), _sessions(ctx)) if d.name == name]
    if found:
        return found[0]
    try:
        peer = Peer.parse(name)
    except ValueError:
        raise Failure(f"no destination {name} (give a destination's name or AE@host:port)") from None
    assert isinstance(peer, Peer)
    return Destination(name="direct", ae_title=peer.ae_title, host=peer.host, port=peer.port)


@destinations_app.command("echo")
def destinations_echo(ctx: typer.Context, name: str) -> None:
    """C-ECHO destination NAME (or AE@host:port) and show the answer and round-trip time."""
    from dicomnode.send.scu import echo

    peer = _destination(ctx, name).peer
    started = time.perf_counter()
    result = echo(context.settings(ctx), peer)
    rtt = (time.perf_counter() - started) * 1000
    if result.status is None:
        raise Failure(f"C-ECHO {peer}: {result} (after {rtt:.0f} ms)")
    _out().print(f"C-ECHO {peer}: {result} in {rtt:.1f} ms")
    if result.status != 0:
        raise typer.Exit(1)


# -- rules ------------------------------------------------------------------------------------------
def _rules(ctx: typer.Context) -> list[Rule]:
    from dicomnode.inference.registry import default_rules, load_manifests

    settings = context.settings(ctx)  # a demonstration model's default rule only with demo_models
    defaults = default_rules(load_manifests(settings.models_dir), settings.demo_models)
    return config_store.runtime_rules(settings, _sessions(ctx), defaults)


def _rule_states(ctx: typer.Context, rules: list[Rule]) -> dict[str, str]:
    """Rule name -> "in force" or why not, with the models checked as the node checks them at start."""
    from dicomnode.inference.registry import Registry, rule_states

    settings = context.settings(ctx)
    registry = Registry(settings.models_dir)  # each required file there with its SHA-256
    return rule_states(rules, registry.manifests, registry.check(), settings.demo_models)


@rules_app.command("list")
def rules_list(ctx: typer.Context) -> None:
    """The routing rules in force now, in order."""
    rules = _rules(ctx)
    states = _rule_states(ctx, rules)
    table = Table("rule", "model", "match", "results to", "state")
    for rule in rules:
        table.add_row(rule.name, rule.model, "; ".join(f"{k} ~ /{v}/" for k, v in rule.match.items()) or "anything",
                      ", ".join(rule.destinations) or "every destination", states[rule.name])
    _out().print(table)


@rules_app.command("add")
def rules_add(ctx: typer.Context, name: str, model: str,
              match: Annotated[list[str] | None, typer.Option(
                  help="KEYWORD=REGEX, searched case-insensitively in the attribute (repeatable)")] = None,
              to: Annotated[list[str] | None, typer.Option(
                  "--to", help="a destination's name, or pacs (repeatable; none: every destination)")] = None,
              allow_missing_model: Annotated[bool, typer.Option(
                  help="save the rule although MODEL is not installed (yet)")] = False) -> None:
    """Run MODEL on the series that every --match finds, from the next sweep on."""
    from dicomnode.inference.registry import load_manifests

    pairs = [item.partition("=") for item in match or []]
    if any(not sep or not key.strip() for key, sep, _ in pairs):
        raise Failure("each --match is KEYWORD=REGEX", code=2)
    rule = Rule(name=name, model=model, match={k.strip(): v.strip() for k, _, v in pairs}, destinations=to or [])
    if not allow_missing_model:
        try:
            config_store.check_rule_model(rule, load_manifests(context.settings(ctx).models_dir))
        except ValueError as exc:
            raise Failure(f"{exc}; pass --allow-missing-model to save it anyway", code=2) from None
    with session_scope(_sessions(ctx)) as session:
        config_store.put_rule(session, rule, user=context.operator(), address="cli")
    _out().print(f"rule {name} saved: the next sweep uses it")


@rules_app.command("remove")
def rules_remove(ctx: typer.Context, name: str) -> None:
    """Stop routing by rule NAME (a rule added at run time)."""
    with session_scope(_sessions(ctx)) as session:
        if not config_store.delete_rule(session, name, user=context.operator(), address="cli"):
            raise Failure(f"no rule {name} was added at run time (configured rules live in the configuration)")
    _out().print(f"rule {name} removed")


@rules_app.command("test")
def rules_test(ctx: typer.Context, paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders")]
               ) -> None:
    """Which models would run on each series under PATHS, and why or why not."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise Failure(f"{missing[0]} does not exist")
    headers, skipped = file_headers(paths, context.settings(ctx).max_inflated_bytes)
    if not headers:
        raise Failure(f"no DICOM file under {', '.join(map(str, paths))}")
    table = Table("series", "description", "would run", "why")
    rules = _rules(ctx)
    for verdict in judge(rules, headers, _rule_states(ctx, rules)):
        table.add_row(verdict.series_uid, verdict.description, ", ".join(verdict.models) or "nothing",
                      "\n".join(verdict.reasons))
    _out().print(table)
    if skipped:
        _out().print(f"{len(skipped)} file(s) skipped: not DICOM")


# -- jobs -------------------------------------------------------------------------------------------
@app.command("jobs")
def jobs_list(ctx: typer.Context, state: Annotated[JobStatus | None, typer.Option(help="only this state")] = None
              ) -> None:
    """Jobs, newest first."""
    table = Table("job", "model", "status", "attempts", "reason", "study")
    for job in jobs.job_rows(_sessions(ctx), state):
        table.add_row(str(job["id"]), job["model"], job["status"], str(job["attempts"]), job["reason"],
                      job["study_uid"])
    _out().print(table)


def _one_job(ctx: typer.Context, job_id: int) -> dict[str, object]:
    rows = jobs.job_rows(_sessions(ctx), job_id=job_id) if 1 <= job_id <= JOB_ID_MAX else []
    if not rows:
        raise Failure(f"no job {job_id}")
    return rows[0]


@job_app.command("show")
def job_show(ctx: typer.Context, job_id: int) -> None:
    """Everything about job JOB_ID."""
    for key, value in _one_job(ctx, job_id).items():
        _out().print(f"{key:>10}: {value}")


def _move(ctx: typer.Context, job_id: int, action: str) -> None:
    _one_job(ctx, job_id)
    with session_scope(_sessions(ctx)) as session:
        (jobs.retry if action == "retry" else jobs.cancel)(session, job_id, context.operator())
    _out().print(f"job {job_id} {'queued again' if action == 'retry' else 'cancelled'}")


@app.command()
def retry(ctx: typer.Context, job_id: int) -> None:
    """Queue dead-lettered job JOB_ID again."""
    _move(ctx, job_id, "retry")


@app.command()
def cancel(ctx: typer.Context, job_id: int) -> None:
    """Cancel queued job JOB_ID (it goes to the dead letter)."""
    _move(ctx, job_id, "cancel")


# -- send -------------------------------------------------------------------------------------------
@app.command()
def send(ctx: typer.Context, paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders")],
         to: Annotated[str, typer.Option("--to", help="a destination's name, or AE@host:port")]) -> None:
    """C-STORE the DICOM files under PATHS to a destination, with progress."""
    from dicomnode.send.scu import send_files

    settings = context.settings(ctx)
    destination = _destination(ctx, to)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise Failure(f"{missing[0]} does not exist")
    files = [f for p in paths for f in (sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])]
    _, skipped = file_headers(files, settings.max_inflated_bytes)
    dicom = [f for f in files if f not in set(skipped)]
    if not dicom:
        raise Failure(f"no DICOM file under {', '.join(map(str, paths))}")
    stored = failed = 0
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task(f"C-STORE to {destination.peer}", total=len(dicom))
        for start in range(0, len(dicom), 50):  # one association per 50 files
            for outcome in send_files(settings, destination.peer, dicom[start:start + 50]):
                stored, failed = stored + outcome.stored, failed + (not outcome.stored)
            progress.advance(task, len(dicom[start:start + 50]))
    with session_scope(make_sessionmaker(make_engine(settings.db_url))) as session:
        record(session, AuditEvent.BEGIN_TRANSFER_OUT, actor=context.operator(), destination=str(destination.peer),
               instances=len(dicom), stored=stored, reason="sent with `dicomnode send`")
    _out().print(f"{stored} of {len(dicom)} instance(s) stored by {destination.peer}"
                 + (f"; {len(skipped)} non-DICOM file(s) skipped" if skipped else ""))
    if failed:
        raise Failure(f"{failed} instance(s) were not stored by {destination.peer}")

