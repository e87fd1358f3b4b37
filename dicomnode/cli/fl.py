"""``dicomnode fl server | client | promote``: argument parsing and one call each (flwr imported lazily)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "ct-nodule-demo"


def add_parsers(sub: Any) -> None:
    """The ``fl`` command group on the argparse sub-parsers ``sub``."""
    fl = sub.add_parser("fl", help="federated rounds (Flower): only model weights leave the site")
    fl_sub = fl.add_subparsers(dest="fl_command", required=True)
    server = fl_sub.add_parser("server", help="aggregate the sites' updates with FedAvg; write a candidate model")
    server.add_argument("--address", default="127.0.0.1:8080", help="host:port to listen on")
    server.add_argument("--model-dir", type=Path, help=f"the model's folder (default: models_dir/{DEFAULT_MODEL})")
    server.add_argument("--rounds", type=int, default=3)
    server.add_argument("--sites", type=int, default=3, help="sites that must take part in every round")
    server.add_argument("--seed", type=int, default=0, help="seed of the round-0 network (without --weights)")
    server.add_argument("--weights", type=Path, help="round-0 weights: an earlier candidate's weights.npz")
    client = fl_sub.add_parser("client", help="train on this site's export and send the weights")
    client.add_argument("--address", default="127.0.0.1:8080", help="the server's host:port")
    client.add_argument("--name", required=True, help="the site's name in the round log (no patient data)")
    client.add_argument("--data", type=Path, required=True, help="datalist.json of `dicomnode export training`")
    client.add_argument("--model-dir", type=Path,
                        help=f"the model this site runs (default: models_dir/{DEFAULT_MODEL})")
    client.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    client.add_argument("--steps", type=int, default=0, help="at most this many steps per epoch (0: all cases)")
    client.add_argument("--patch", type=int, default=32, help="training crop edge, voxels")
    client.add_argument("--seed", type=int, default=0)
    promote = fl_sub.add_parser("promote", help="make a candidate that passed the gate the model's new version")
    promote.add_argument("candidate", type=Path, help="the candidate's folder (models/<id>/candidates/<name>)")


def run(args: argparse.Namespace, models_dir: Path) -> int:
    from dicomnode.errors import ModelError

    model_dir = getattr(args, "model_dir", None) or models_dir / DEFAULT_MODEL
    try:
        if args.fl_command == "server":
            from dicomnode.fl.server import run_server

            candidate = run_server(args.address, model_dir, args.rounds, args.sites, args.seed, args.weights)
            gate = "passes the gate" if candidate.passes_gate else "stays a candidate (worse at a site)"
            print(f"candidate {candidate.name} of {candidate.model} {candidate.base_version}: {gate}")
            return 0
        if args.fl_command == "client":
            from dicomnode.fl.client import LocalTraining, run_client

            data = args.data / "datalist.json" if args.data.is_dir() else args.data
            run_client(args.address, args.name, data, model_dir / "model.onnx",
                       LocalTraining(epochs=args.epochs, steps=args.steps, patch=args.patch, seed=args.seed))
            return 0
        from dicomnode.fl.candidate import promote, read_candidate

        print(f"promoted: version {promote(read_candidate(args.candidate))}")
        return 0
    except (ModelError, OSError, ValueError, RuntimeError) as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return 1
