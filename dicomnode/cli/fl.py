"""``dicomnode fl server | client | promote``: federated rounds, one call each (flwr imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli import context
from dicomnode.cli.context import Failure
from dicomnode.errors import ModelError

DEFAULT_MODEL = "ct-nodule-demo"

fl_app = typer.Typer(no_args_is_help=True, help="federated rounds (Flower): only model weights leave the site")


def _model_dir(ctx: typer.Context, model_dir: Path | None) -> Path:
    return model_dir or context.settings(ctx).models_dir / DEFAULT_MODEL


@fl_app.command("server")
def server(ctx: typer.Context,
           address: Annotated[str, typer.Option(help="host:port to listen on")] = "127.0.0.1:8080",
           model_dir: Annotated[Path | None, typer.Option(
               help=f"the model's folder (default: models_dir/{DEFAULT_MODEL})")] = None,
           rounds: int = 3,
           sites: Annotated[int, typer.Option(help="sites that must take part in every round")] = 3,
           seed: Annotated[int, typer.Option(help="seed of the round-0 network (without --weights)")] = 0,
           weights: Annotated[Path | None, typer.Option(
               help="round-0 weights: an earlier candidate's weights.npz")] = None) -> None:
    """aggregate the sites' updates with FedAvg; write a candidate model"""
    from dicomnode.fl.server import run_server

    folder = _model_dir(ctx, model_dir)
    try:
        candidate = run_server(address, folder, rounds, sites, seed, weights)
    except (ModelError, OSError, ValueError, RuntimeError) as exc:
        raise Failure(str(exc)) from None
    gate = "passes the gate" if candidate.passes_gate else "stays a candidate (worse at a site)"
    print(f"candidate {candidate.name} of {candidate.model} {candidate.base_version}: {gate}")


@fl_app.command("client")
def client(ctx: typer.Context,
           name: Annotated[str, typer.Option(help="the site's name in the round log (no patient data)")],
           data: Annotated[Path, typer.Option(help="datalist.json of `dicomnode export training`")],
           address: Annotated[str, typer.Option(help="the server's host:port")] = "127.0.0.1:8080",
           model_dir: Annotated[Path | None, typer.Option(
               help=f"the model this site runs (default: models_dir/{DEFAULT_MODEL})")] = None,
           epochs: Annotated[int, typer.Option(help="local epochs per round")] = 1,
           steps: Annotated[int, typer.Option(help="at most this many steps per epoch (0: all cases)")] = 0,
           patch: Annotated[int, typer.Option(help="training crop edge, voxels")] = 32,
           seed: int = 0) -> None:
    """train on this site's export and send the weights"""
    from dicomnode.fl.client import LocalTraining, run_client

    folder = _model_dir(ctx, model_dir)
    datalist = data / "datalist.json" if data.is_dir() else data
    try:
        run_client(address, name, datalist, folder / "model.onnx",
                   LocalTraining(epochs=epochs, steps=steps, patch=patch, seed=seed))
    except (ModelError, OSError, ValueError, RuntimeError) as exc:
        raise Failure(str(exc)) from None


@fl_app.command("promote")
def promote(candidate: Annotated[Path, typer.Argument(
        help="the candidate's folder (models/<id>/candidates/<name>)")]) -> None:
    """make a candidate that passed the gate the model's new version"""
    from dicomnode.fl import candidate as candidates

    try:
        version = candidates.promote(candidates.read_candidate(candidate))
    except (ModelError, OSError, ValueError, RuntimeError) as exc:
        raise Failure(str(exc)) from None
    print(f"promoted: version {version}")
