"""The ``dicomnode`` command: one typer app, one function per subcommand.

The root app holds the global ``--config`` option and the node's own commands (serve, receive, work, web, db,
status, echo, purge, admin, audit); the operator's commands come from ``operator.py``, the ``models``, ``fl``
and ``export`` groups from their modules. :func:`main` runs one command line: every failure is one sentence on
standard error, ``dicomnode: ...``, and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.auth import hash_password
from dicomnode.admin.studies import disk_status, study_rows
from dicomnode.audit.anchor import read_checkpoints
from dicomnode.audit.atna import Source, audit_message
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.models import AuditRecord
from dicomnode.audit.trail import as_dict, export_rows, record, verify
from dicomnode.cli import context, operator
from dicomnode.cli.context import Failure, Invocation, first_error
from dicomnode.cli.export import export_app
from dicomnode.cli.fl import fl_app
from dicomnode.cli.models import models_app
from dicomnode.db import make_engine, make_sessionmaker, session_scope
from dicomnode.errors import DicomNodeError
from dicomnode.log import extra, setup_logging
from dicomnode.settings import Settings

app = typer.Typer(
    name="dicomnode", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="The ``dicomnode`` command: parse, load settings and logging, call one function per subcommand.")
admin_app = typer.Typer(no_args_is_help=True, help="admin API users")
audit_app = typer.Typer(no_args_is_help=True, help="the tamper-evident audit trail")


@app.callback()
def _root(ctx: typer.Context, config: Annotated[str | None, typer.Option(
        help="TOML configuration file (default: $DICOMNODE_CONFIG)")] = None) -> None:
    # the operator's commands, and echo: warnings only (a failure is their one sentence, which says why)
    quiet = ctx.invoked_subcommand in operator.COMMANDS | {"echo"}
    ctx.obj = Invocation(config, own_logging=not quiet)
    if quiet:
        setup_logging("WARNING")
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its failures are reported as one sentence


def _sessions(ctx: typer.Context) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(context.settings(ctx).db_url))


# -- the node's roles -------------------------------------------------------------------------------
def _serve(ctx: typer.Context, role: str | None) -> None:
    from dicomnode import node

    raise typer.Exit(node.serve(context.settings(ctx), node.ROLES if role is None else frozenset({role})))


@app.command()
def serve(ctx: typer.Context) -> None:
    """run receiver, completeness sweep and worker until SIGTERM"""
    _serve(ctx, None)


@app.command()
def receive(ctx: typer.Context) -> None:
    """only the receiver role: SCP, completeness sweep, audit anchor and forwarder"""
    _serve(ctx, "receive")


@app.command()
def work(ctx: typer.Context) -> None:
    """only the worker role: run jobs (several processes and hosts may share a queue)"""
    _serve(ctx, "work")


@app.command()
def web(ctx: typer.Context) -> None:
    """only the admin API and web console (admin_host:admin_port) until SIGTERM"""
    if not context.settings(ctx).admin_port:
        raise Failure("web needs admin_port (DICOMNODE_ADMIN_PORT)", code=2)
    _serve(ctx, "web")


# -- the database, the studies, the PACS, retention -------------------------------------------------
@app.command()
def db(ctx: typer.Context, action: Literal["upgrade"]) -> None:
    """database schema"""
    from dicomnode.migrate import upgrade

    settings = context.settings(ctx)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    upgrade(settings.db_url)  # the one action


@app.command()
def status(ctx: typer.Context,
           study: Annotated[str | None, typer.Option(help="only this StudyInstanceUID")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """studies and jobs, and why each is waiting"""
    from dicomnode.inference.registry import Registry, suspended
    from dicomnode.monitoring.models import drift_warnings

    settings, sessions = context.settings(ctx), _sessions(ctx)
    rows = study_rows(sessions, study)
    disk = disk_status(settings)
    registry = Registry(settings.models_dir)  # checked as the node checks it at start: each file's SHA-256
    held = suspended(registry.manifests, registry.check(), settings.demo_models)
    models = {m: held.get(m, "routed") for m in registry.manifests}
    drift = drift_warnings(sessions, settings.results_dir, registry.manifests.values())
    if as_json:
        print(json.dumps({"disk": disk, "drift": drift, "models": models, "studies": rows}, indent=2))
    else:
        print(f"disk: {disk['free_mb']} MiB free (min {settings.min_free_disk_mb:g}): "
              + ("accepting instances" if disk["accepting"] else f"REFUSING instances ({disk['reason']})"))
        for model_id in registry.unavailable:
            print(f"MODEL UNAVAILABLE (its rules are suspended): {held[model_id]}")
        for warning in drift:
            print(f"DRIFT WARNING: {warning}")
        for row in rows:
            print(f"{row['study_uid']}  {row['reason']}")
            pacs = row["pacs"]
            if pacs["instances"] is not None or pacs["note"]:  # a query peer's counts (dicomnode.query.counts)
                print(f"  PACS holds {pacs['instances'] if pacs['instances'] is not None else '?'} instance(s), "
                      f"the node {pacs['received']}" + (f" ({pacs['note']})" if pacs["note"] else ""))
            for series in row["series"]:
                counts = "" if series["pacs_instances"] is None else \
                    f" [{series['instances']} of the PACS's {series['pacs_instances']}]"
                print(f"  series {series['number']}: {series['route']}{counts}")
            for prior in row["priors"]:
                print(f"  prior {prior['date'] or '?'} for job {prior['job']}: {prior['state']}"
                      + (f" ({prior['reason']})" if prior["reason"] else "")
                      + (f", {prior['instances']} instance(s), {prior['bytes'] / 2**20:.1f} MiB in "
                         f"{prior['seconds']:.2f} s" if prior["instances"] else ""))
            for job in row["jobs"]:
                retry = f" (next try {job['run_after']})" if job["run_after"] else ""
                print(f"  job {job['id']} {job['model']}: {job['status']} after {job['attempts']} attempt(s): "
                      f"{job['reason']}{retry}")
    if study and not rows:
        raise Failure(f"no study {study}")


@app.command()
def echo(ctx: typer.Context) -> None:
    """C-ECHO the configured PACS"""
    from dicomnode.send.scu import echo as c_echo

    settings = context.settings(ctx)
    if settings.pacs is None:
        raise Failure("no PACS configured (DICOMNODE_PACS)", code=2)
    result = c_echo(settings, settings.pacs)
    if result.status != 0:
        raise Failure(f"C-ECHO {settings.pacs}: {result}")
    print(f"C-ECHO {settings.pacs}: {result}")


@app.command()
def purge(ctx: typer.Context) -> None:
    """apply the retention policy now"""
    from dicomnode.store.retention import purge as apply_retention

    print(f"purged {apply_retention(context.settings(ctx), _sessions(ctx))} studies")


@admin_app.command("hash-password")
def hash_password_command() -> None:
    """read a password (prompt or stdin), print its hash for admin_users"""
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        raise Failure("use a password of at least 12 characters", code=2)
    print(hash_password(password))


# -- the audit trail --------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(ctx: typer.Context, anchor: Annotated[Path | None, typer.Option(
        help="anchor file (audit_anchor_file) or a capture of the ATNA stream: also detect removed newest rows"
        )] = None) -> None:
    """check the hash chain; exit 1 naming the first bad row"""
    anchors = read_checkpoints(anchor) if anchor is not None else []
    result = verify(_sessions(ctx), anchors)
    if not result.ok:
        raise Failure(f"audit trail BROKEN at row {result.first_bad_id}: {result.reason} "
                      f"({result.rows} rows before it verified)")
    against = f", matching {len(anchors)} checkpoint(s)" if anchors else ""
    print(f"audit trail intact: {result.rows} rows{against}")


def _audit_xml(settings: Settings, rows: Sequence[AuditRecord]) -> bytes:
    source = Source(ae_title=settings.audit_source_id or settings.ae_title, host=socket.gethostname(),
                    pid=os.getpid(), site_id=settings.audit_enterprise_site_id)
    messages = [m for m in (audit_message(r, source) for r in rows) if m is not None]
    return b"<?xml version='1.0' encoding='utf-8'?>\n<AuditMessages>\n" + b"\n".join(
        m.split(b"?>", 1)[1].strip() for m in messages) + b"\n</AuditMessages>\n"


@audit_app.command("export")
def audit_export(
        ctx: typer.Context,
        since: Annotated[dt.datetime | None, typer.Option(
            parser=context.timestamp, help="ISO date/time, inclusive (UTC unless given)")] = None,
        until: Annotated[dt.datetime | None, typer.Option(
            parser=context.timestamp, help="ISO date/time, exclusive")] = None,
        fmt: Annotated[Literal["json", "xml"], typer.Option(
            "--format", help="json: every row with its hashes; xml: the DICOM audit messages (PS3.15 A.5)")] = "json",
        output: Annotated[Path | None, typer.Option(help="file to write (default: standard output)")] = None,
) -> None:
    """export the trail (PHI: written owner-only)"""
    sessions = _sessions(ctx)
    rows = export_rows(sessions, since, until)
    if fmt == "json":
        payload = json.dumps([as_dict(r) for r in rows], indent=1).encode()
    else:
        payload = _audit_xml(context.settings(ctx), rows)
    with session_scope(sessions) as session:
        record(session, AuditEvent.AUDIT_EXPORTED, actor=context.operator(), rows=len(rows), format=fmt,
               since=since, until=until, output=str(output or "stdout"))
    if output is None:
        sys.stdout.buffer.write(payload)
    else:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(payload)


app.add_typer(operator.app)  # init, peers, destinations, rules, jobs, job, retry, cancel, send
app.add_typer(admin_app, name="admin")
app.add_typer(audit_app, name="audit")
app.add_typer(models_app, name="models")
app.add_typer(export_app, name="export")
app.add_typer(fl_app, name="fl")


# -- one sentence per failure -----------------------------------------------------------------------
def _install(extra: str) -> str:
    return f"install the {extra} extra (`pip install 'dicomnode[{extra}]'`, or `pip install -e '.[{extra}]'`)"


_POSTGRES = ("DICOMNODE_DATABASE_URL=postgresql+psycopg://... needs the postgres extra: "
             "`.venv/bin/pip install 'dicomnode[postgres]'` or `pip install -e '.[postgres]'`")
MISSING = {  # a top-level module a command imports lazily -> how to install it
    "flwr": "`scripts/setup.sh --dev` installs it (`pip install --no-deps flwr==1.42.0`), and its dependencies "
            "are the fl extra (`pip install -e '.[fl]'`)",
    **dict.fromkeys(("grpc", "grpc_health", "monai", "onnx"), _install("fl")),
    "torch": _install("torch"),
    **dict.fromkeys(("onnxruntime", "cc3d", "fill_voids"), _install("onnx")),
    "psycopg": _POSTGRES,
    "psycopg2": f"write the URL as postgresql+psycopg://...; {_POSTGRES}",
}


def missing_dependency(exc: ModuleNotFoundError) -> str:
    """The sentence for a module that is not installed: which extra or set-up step brings it."""
    module = (exc.name or "").partition(".")[0]
    if module in MISSING:
        return f"{module} is not installed: {MISSING[module]}"
    if module and module != "dicomnode":
        return f"the Python package {module} is not installed"
    return f"this installation of dicomnode is incomplete ({exc})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _usage(exc: typer.TyperException) -> tuple[int, str]:
    command = getattr(getattr(exc, "ctx", None), "command_path", "dicomnode")
    return getattr(exc, "exit_code", 2), f"{_one_line(exc.format_message()).rstrip('.')} (see `{command} --help`)"


def _failure(exc: Exception) -> tuple[int, str]:
    """The exit status and the one sentence for ``exc``."""
    if isinstance(exc, Failure):
        return exc.code, str(exc)
    if isinstance(exc, typer.Abort):
        return 130, "aborted"
    if isinstance(exc, typer.TyperException):
        return _usage(exc)
    if isinstance(exc, ModuleNotFoundError):
        return 1, missing_dependency(exc)
    if isinstance(exc, ValidationError):
        return 2, first_error(exc)
    if isinstance(exc, (DicomNodeError, LookupError, OSError)):
        return 1, _one_line(str(exc))
    if isinstance(exc, SQLAlchemyError):
        return 1, f"database error: {_one_line(str(getattr(exc, 'orig', None) or exc))}"
    logging.getLogger("dicomnode").debug("unexpected error", exc_info=exc,  # the frames, at log_level DEBUG
                                         extra=extra(stage="cli"))
    return 1, f"unexpected error ({type(exc).__name__}): {_one_line(str(exc))}"


def main(argv: Sequence[str] | None = None) -> int:
    """The ``dicomnode`` console script: run one command line and return its exit status.

    Parameters
    ----------
    argv
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success; 1 for a failure, 2 for a usage or configuration error, each with one sentence,
        ``dicomnode: ...``, on standard error.
    """
    os.umask(0o077)  # the database, spool, results and exports hold PHI: owner-only
    try:
        result = app(sys.argv[1:] if argv is None else list(argv), prog_name="dicomnode", standalone_mode=False)
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group without its subcommand: its help, as usage
            exc.show()  # type: ignore[attr-defined]
            return 2
        code, sentence = _failure(exc)
        print(f"dicomnode: {sentence}", file=sys.stderr)
        return code
    return result if isinstance(result, int) else 0
