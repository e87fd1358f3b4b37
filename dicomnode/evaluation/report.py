"""``dicomnode models evaluate MODEL [--since DATE]``: the model's results against the readers' references."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from statistics import fmean

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.jobs.models import ReferenceObject


@dataclass(frozen=True)
class EvaluationRow:
    at: dt.datetime
    job_id: int
    model_version: str
    label: str
    dice: float
    node_ml: float
    reference_ml: float


def evaluation_rows(sessions: sessionmaker[Session], model: str, since: dt.datetime | None = None,
                    progress: Progress | None = None) -> list[EvaluationRow]:
    """Every segment score of ``model``'s evaluated references, oldest first, read in pages."""
    where = [ReferenceObject.model_id == model, ReferenceObject.outcome == "evaluated"]
    if since is not None:
        where.append(ReferenceObject.at >= since)
    rows: list[EvaluationRow] = []
    with sessions() as session:
        total = session.scalar(select(func.count()).select_from(ReferenceObject).where(*where)) or 0
        task = progress.add_task(f"references of {model}", total=total) if progress is not None else None
        last = 0
        while True:
            page = session.scalars(select(ReferenceObject).where(*where, ReferenceObject.id > last)
                                   .order_by(ReferenceObject.id).limit(500)).all()
            if not page:
                break
            for ref in page:
                rows += [EvaluationRow(ref.at, ref.job_id or 0, ref.model_version or "", s.label, s.dice, s.node_ml,
                                       s.reference_ml) for s in ref.segments]
            last = page[-1].id
            if progress is not None and task is not None:
                progress.advance(task, len(page))
    return rows


def agreement(sessions: sessionmaker[Session], model: str, since: dt.datetime | None = None) -> tuple[int, int]:
    """How many readers' reports agreed with the classifier ``model``, of how many evaluated."""
    where = [ReferenceObject.model_id == model, ReferenceObject.agrees.is_not(None)]
    if since is not None:
        where.append(ReferenceObject.at >= since)
    with sessions() as session:
        values = session.scalars(select(ReferenceObject.agrees).where(*where)).all()
    return sum(bool(v) for v in values), len(values)


def render(model: str, rows: list[EvaluationRow]) -> Table:
    """One line per reference and segment, then the mean Dice and volume difference per segment."""
    table = Table(title=f"{model}: local evaluation against readers' references")
    for column in ("evaluated at", "job", "version", "segment", "Dice", "node ml", "reference ml", "diff ml"):
        table.add_column(column, justify="right" if column not in ("segment", "evaluated at") else "left")
    for r in rows:
        table.add_row(r.at.strftime("%Y-%m-%d %H:%M"), str(r.job_id), r.model_version, r.label, f"{r.dice:.3f}",
                      f"{r.node_ml:.2f}", f"{r.reference_ml:.2f}", f"{r.reference_ml - r.node_ml:+.2f}")
    for label in sorted({r.label for r in rows}):
        mine = [r for r in rows if r.label == label]
        table.add_row("mean", f"n={len(mine)}", "", label, f"{fmean(r.dice for r in mine):.3f}",
                      f"{fmean(r.node_ml for r in mine):.2f}", f"{fmean(r.reference_ml for r in mine):.2f}",
                      f"{fmean(r.reference_ml - r.node_ml for r in mine):+.2f}", style="bold")
    return table


def print_evaluation(sessions: sessionmaker[Session], model: str, since: dt.datetime | None,
                     console: Console | None = None) -> int:
    """Print the table; returns how many segment scores it holds."""
    console = console or Console(highlight=False, soft_wrap=True)
    with Progress(console=console, transient=True) as progress:
        rows = evaluation_rows(sessions, model, since, progress)
    agreed, reports = agreement(sessions, model, since)
    if reports:
        console.print(f"{model}: readers' reports agree with the model in {agreed} of {reports} "
                      f"({agreed / reports:.0%})")
    if rows:
        console.print(render(model, rows))
    elif not reports:
        console.print(f"{model}: no reference evaluated yet")
    return len(rows) + reports
