"""The ``dicomnode`` command: parse, load settings and logging, call one function per subcommand."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select

from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.jobs.models import Job, Series, Study
from dicomnode.log import setup_logging
from dicomnode.receive.handlers import disk_guard
from dicomnode.settings import Settings
from dicomnode.store.spool import free_bytes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (default: $DICOMNODE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run receiver, completeness sweep and worker until SIGTERM")
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    status = sub.add_parser("status", help="studies and jobs, and why each is waiting")
    status.add_argument("--study", help="only this StudyInstanceUID")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("echo", help="C-ECHO the configured PACS")
    return parser


def _status(settings: Settings, study_uid: str | None, as_json: bool) -> int:
    sessions = make_sessionmaker(make_engine(settings.db_url))
    with sessions() as session:
        query = select(Study).order_by(Study.id)
        if study_uid:
            query = query.where(Study.study_uid == study_uid)
        rows: list[dict[str, Any]] = []
        for study in session.scalars(query):
            jobs = session.scalars(select(Job).join(Job.series).where(Series.study_id == study.id)).all()
            rows.append({
                "study_uid": study.study_uid, "state": study.state.value, "reason": study.state_reason,
                "series": [{"series_uid": s.series_uid, "number": s.series_number, "route": s.route_reason}
                           for s in study.series],
                "jobs": [{"id": j.id, "model": j.model_id, "status": j.status.value, "reason": j.reason,
                          "attempts": j.attempts} for j in jobs],
            })
    guard = disk_guard(settings)
    disk = {"free_mb": round(free_bytes(settings.spool_dir) / 2**20), "min_free_mb": settings.min_free_disk_mb,
            "accepting": not guard, "reason": guard}
    if as_json:
        print(json.dumps({"disk": disk, "studies": rows}, indent=2))
    else:
        print(f"disk: {disk['free_mb']} MiB free (min {settings.min_free_disk_mb:g}): "
              + ("accepting instances" if not guard else f"REFUSING instances ({guard})"))
        for row in rows:
            print(f"{row['study_uid']}  {row['reason']}")
            for series in row["series"]:
                print(f"  series {series['number']}: {series['route']}")
            for job in row["jobs"]:
                print(f"  job {job['id']} {job['model']}: {job['status']} {job['reason']}")
    if study_uid and not rows:
        print(f"no study {study_uid}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.load(args.config)
    except (ValidationError, FileNotFoundError) as exc:
        print(f"dicomnode: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    if args.command == "serve":
        from dicomnode.node import serve

        return serve(settings)
    if args.command == "db":
        from dicomnode.migrate import upgrade

        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        upgrade(settings.db_url)
        return 0
    if args.command == "status":
        return _status(settings, args.study, args.json)
    if args.command == "echo":
        from dicomnode.send.scu import echo

        if settings.pacs is None:
            print("dicomnode: no PACS configured (DICOMNODE_PACS)", file=sys.stderr)
            return 2
        result = echo(settings, settings.pacs)
        print(f"C-ECHO {settings.pacs}: " + ("no association" if result is None else f"0x{result:04X}"))
        return 0 if result == 0 else 1
    return 2
