"""The ``dicomnode`` command: parse, load settings and logging, call one function per subcommand."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from dicomnode.admin.auth import hash_password
from dicomnode.admin.studies import disk_status, study_rows
from dicomnode.audit.anchor import read_checkpoints
from dicomnode.audit.atna import Source, audit_message
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import as_dict, export_rows, record, verify
from dicomnode.cli.fl import add_parsers as add_fl_parsers
from dicomnode.db import make_engine, make_sessionmaker, session_scope
from dicomnode.log import setup_logging
from dicomnode.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode", description=__doc__, epilog=(
        "operator commands (each with --help): init, peers, destinations, rules, jobs, job, retry, cancel, send"))
    parser.add_argument("--config", help="TOML configuration file (default: $DICOMNODE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run receiver, completeness sweep and worker until SIGTERM")
    sub.add_parser("receive", help="only the receiver role: SCP, completeness sweep, audit anchor and forwarder")
    sub.add_parser("work", help="only the worker role: run jobs (several processes and hosts may share a queue)")
    sub.add_parser("web", help="only the admin API and web console (admin_host:admin_port) until SIGTERM")
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    status = sub.add_parser("status", help="studies and jobs, and why each is waiting")
    status.add_argument("--study", help="only this StudyInstanceUID")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("echo", help="C-ECHO the configured PACS")
    sub.add_parser("purge", help="apply the retention policy now")
    admin = sub.add_parser("admin", help="admin API users")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    admin_sub.add_parser("hash-password", help="read a password (prompt or stdin), print its hash for admin_users")
    audit = sub.add_parser("audit", help="the tamper-evident audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify_cmd = audit_sub.add_parser("verify", help="check the hash chain; exit 1 naming the first bad row")
    verify_cmd.add_argument("--anchor", type=Path,
                            help="anchor file (audit_anchor_file) or a capture of the ATNA stream: "
                                 "also detect removed newest rows")
    export = audit_sub.add_parser("export", help="export the trail (PHI: written owner-only)")
    export.add_argument("--since", type=_timestamp, help="ISO date/time, inclusive (UTC unless given)")
    export.add_argument("--until", type=_timestamp, help="ISO date/time, exclusive")
    export.add_argument("--format", choices=["json", "xml"], default="json",
                        help="json: every row with its hashes; xml: the DICOM audit messages (PS3.15 A.5)")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    models = sub.add_parser("models", help="the installed models: list, verify, try one on a series")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="id, version, task, backend, device, warm or not")
    listing.add_argument("--load", action="store_true", help="load each model (shows its device)")
    verify_cmd = models_sub.add_parser("verify", help="checksums, a load test, a run on a synthetic input")
    verify_cmd.add_argument("model", nargs="?", help="one model id (default: every model)")
    run = models_sub.add_parser("run", help="run a model on a series on disk and write the results it would send")
    run.add_argument("model")
    run.add_argument("path", type=Path, help="a DICOM file or a folder of one or more series")
    run.add_argument("--output", type=Path, default=Path("dicomnode-run"), help="folder for the SEG/SR/SC files")
    evaluate = models_sub.add_parser("evaluate", help="the model's results against readers' corrected SEGs")
    evaluate.add_argument("model")
    evaluate.add_argument("--since", type=_timestamp, help="ISO date/time, inclusive (UTC unless given)")
    outgoing = sub.add_parser("export", help="data that leaves the site, de-identified")
    outgoing_sub = outgoing.add_subparsers(dest="export_command", required=True)
    training = outgoing_sub.add_parser("training", help="NIfTI volumes and labels of a model's cases, datalist.json")
    training.add_argument("--model", required=True)
    training.add_argument("--since", type=_timestamp, help="jobs finished since (ISO date/time, UTC unless given)")
    training.add_argument("out", type=Path, help="folder to write")
    add_fl_parsers(sub)
    return parser


def _export_command(settings: Settings, args: argparse.Namespace) -> int:
    from dicomnode.errors import DicomNodeError
    from dicomnode.export.training import export_training

    try:
        n = export_training(make_sessionmaker(make_engine(settings.db_url)), settings.results_dir, args.model,
                            args.out, args.since)
    except (DicomNodeError, OSError) as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return 1
    print(f"{n} case(s) written to {args.out} (datalist.json)")
    return 0


def _models_command(settings: Settings, args: argparse.Namespace) -> int:
    from dicomnode.cli.models import list_models, run_model, verify_model
    from dicomnode.errors import DicomNodeError
    from dicomnode.inference.registry import Registry, RuntimeOptions

    registry = Registry(settings.models_dir, options=RuntimeOptions(
        device=settings.device, threads=settings.inference_threads, concurrency=settings.inference_concurrency))
    try:
        if args.models_command == "evaluate":
            from dicomnode.evaluation.report import print_evaluation

            print_evaluation(make_sessionmaker(make_engine(settings.db_url)), args.model, args.since)
            return 0
        if args.models_command == "list":
            print(f"{'id':24} {'version':10} {'task':15} {'backend':8} {'device':6} warm")
            rows = list_models(registry, args.load)
            for row in rows:
                print(f"{row.id:24} {row.version:10} {row.task:15} {row.backend:8} {row.device:6} "
                      f"{'yes' if row.warm else 'no'}" + (f"  ERROR: {row.error}" if row.error else ""))
            from dicomnode.fl.candidate import candidates

            for candidate in candidates(settings.models_dir):
                gate = "passed the gate" if candidate.passes_gate else "not promoted: worse at a site"
                print(f"  candidate {candidate.name} of {candidate.model} {candidate.base_version} "
                      f"({len(candidate.rounds)} rounds, {gate})")
            return 1 if any(r.error for r in rows) else 0
        if args.models_command == "verify":
            ids = [args.model] if args.model else sorted({*registry.manifests, *registry.errors})
            failed = 0
            for model_id in ids:
                try:
                    print(f"{model_id}: {verify_model(registry, model_id)}")
                except DicomNodeError as exc:
                    failed += 1
                    print(f"{model_id}: FAILED: {exc}", file=sys.stderr)
            return 1 if failed else 0
        for line in run_model(registry, args.model, args.path, args.output):
            print(line)
        print(f"results written to {args.output}")
        return 0
    except (DicomNodeError, OSError) as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return 1


def _timestamp(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _audit_command(settings: Settings, args: argparse.Namespace) -> int:
    sessions = make_sessionmaker(make_engine(settings.db_url))
    if args.audit_command == "verify":
        anchors = read_checkpoints(args.anchor) if args.anchor is not None else []
        result = verify(sessions, anchors)
        if result.ok:
            against = f", matching {len(anchors)} checkpoint(s)" if anchors else ""
            print(f"audit trail intact: {result.rows} rows{against}")
            return 0
        print(f"audit trail BROKEN at row {result.first_bad_id}: {result.reason} "
              f"({result.rows} rows before it verified)", file=sys.stderr)
        return 1
    rows = export_rows(sessions, args.since, args.until)
    if args.format == "json":
        payload = json.dumps([as_dict(r) for r in rows], indent=1).encode()
    else:
        source = Source(ae_title=settings.audit_source_id or settings.ae_title, host=socket.gethostname(),
                        pid=os.getpid(), site_id=settings.audit_enterprise_site_id)
        messages = [m for m in (audit_message(r, source) for r in rows) if m is not None]
        payload = b"<?xml version='1.0' encoding='utf-8'?>\n<AuditMessages>\n" + b"\n".join(
            m.split(b"?>", 1)[1].strip() for m in messages) + b"\n</AuditMessages>\n"
    with session_scope(sessions) as session:
        record(session, AuditEvent.AUDIT_EXPORTED, actor=_operator(), rows=len(rows), format=args.format,
               since=args.since, until=args.until, output=str(args.output or "stdout"))
    if args.output is None:
        sys.stdout.buffer.write(payload)
    else:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
    return 0


def _status(settings: Settings, study_uid: str | None, as_json: bool) -> int:
    from dicomnode.inference.manifest import scan
    from dicomnode.monitoring.models import drift_warnings

    sessions = make_sessionmaker(make_engine(settings.db_url))
    rows = study_rows(sessions, study_uid)
    disk = disk_status(settings)
    drift = drift_warnings(sessions, settings.results_dir, scan(settings.models_dir)[0].values())
    if as_json:
        print(json.dumps({"disk": disk, "drift": drift, "studies": rows}, indent=2))
    else:
        print(f"disk: {disk['free_mb']} MiB free (min {settings.min_free_disk_mb:g}): "
              + ("accepting instances" if disk["accepting"] else f"REFUSING instances ({disk['reason']})"))
        for warning in drift:
            print(f"DRIFT WARNING: {warning}")
        for row in rows:
            print(f"{row['study_uid']}  {row['reason']}")
            for series in row["series"]:
                print(f"  series {series['number']}: {series['route']}")
            for job in row["jobs"]:
                retry = f" (next try {job['run_after']})" if job["run_after"] else ""
                print(f"  job {job['id']} {job['model']}: {job['status']} after {job['attempts']} attempt(s): "
                      f"{job['reason']}{retry}")
    if study_uid and not rows:
        print(f"no study {study_uid}", file=sys.stderr)
        return 1
    return 0


def _admin_command(args: argparse.Namespace) -> int:
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        print("dicomnode: use a password of at least 12 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv`` (after an optional ``--config FILE``)."""
    rest = list(argv)
    while rest and rest[0].startswith("--config"):
        rest = rest[1:] if "=" in rest[0] else rest[2:]
    return rest[0] if rest else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.umask(0o077)  # the database, spool, results and exports hold PHI: owner-only
    from dicomnode.cli.operator import COMMANDS, run

    if _command_word(argv) in COMMANDS:  # the operator's commands (typer): init, peers, ..., send
        setup_logging("WARNING")
        return run(argv)
    args = _parser().parse_args(argv)
    try:
        settings = Settings.load(args.config)
    except (ValidationError, FileNotFoundError) as exc:
        print(f"dicomnode: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    if args.command in ("serve", "receive", "work", "web"):
        from dicomnode.node import ROLES, serve

        if args.command == "web" and not settings.admin_port:
            print("dicomnode: web needs admin_port (DICOMNODE_ADMIN_PORT)", file=sys.stderr)
            return 2
        return serve(settings, ROLES if args.command == "serve" else frozenset({args.command}))
    if args.command == "db":
        from dicomnode.migrate import upgrade

        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        upgrade(settings.db_url)
        return 0
    if args.command == "status":
        return _status(settings, args.study, args.json)
    if args.command == "admin":
        return _admin_command(args)
    if args.command == "audit":
        return _audit_command(settings, args)
    if args.command == "models":
        return _models_command(settings, args)
    if args.command == "export":
        return _export_command(settings, args)
    if args.command == "fl":
        from dicomnode.cli.fl import run as run_fl

        return run_fl(args, settings.models_dir)
    if args.command == "purge":
        from dicomnode.store.retention import purge

        print(f"purged {purge(settings, make_sessionmaker(make_engine(settings.db_url)))} studies")
        return 0
    if args.command == "echo":
        from dicomnode.send.scu import echo

        if settings.pacs is None:
            print("dicomnode: no PACS configured (DICOMNODE_PACS)", file=sys.stderr)
            return 2
        result = echo(settings, settings.pacs)
        print(f"C-ECHO {settings.pacs}: " + ("no association" if result is None else f"0x{result:04X}"))
        return 0 if result == 0 else 1
    return 2
