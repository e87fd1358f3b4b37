"""``dicomnode export training``: a model's cases as NIfTI volumes and labels, de-identified, for training."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli import context
from dicomnode.db import make_engine, make_sessionmaker

export_app = typer.Typer(no_args_is_help=True, help="data that leaves the site, de-identified")


@export_app.command("training")
def training(ctx: typer.Context, model: Annotated[str, typer.Option()],
             out: Annotated[Path, typer.Argument(help="folder to write")],
             since: Annotated[dt.datetime | None, typer.Option(
                 parser=context.timestamp, help="jobs finished since (ISO date/time, UTC unless given)")] = None
             ) -> None:
    """NIfTI volumes and labels of a model's cases, datalist.json"""
    from dicomnode.export.training import export_training

    settings = context.settings(ctx)
    n = export_training(make_sessionmaker(make_engine(settings.db_url)), settings.results_dir, model, out, since)
    print(f"{n} case(s) written to {out} (datalist.json)")
