"""``dicomnode fl server``: FedAvg over the sites' weight updates; the result is a candidate model.

Flower's gRPC server (``flwr.server.start_server``, Flower 1.42) runs ``rounds`` rounds: each site trains
locally and sends its weights, FedAvg averages them (weighted by the sites' case counts), then each
site evaluates the new global model on its own evaluation set. The final global model is written as a
candidate of the model, under ``<model folder>/candidates/<name>/``: ``weights.npz``, ``model.onnx`` and
``candidate.json`` (each round's per-site Dice of the candidate and of the current model, and whether
the candidate passes the promotion gate: at least as good as the current model at every site).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import EvaluateRes, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerConfig, start_server
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from dicomnode.fl.candidate import Candidate, write_candidate
from dicomnode.fl.network import network, seed_everything


@dataclass
class RoundLog:
    """What the server learnt in each round: the sites' evaluation metrics (numbers only)."""

    rounds: list[dict[str, Any]] = field(default_factory=list)


class RecordingFedAvg(FedAvg):
    """FedAvg that keeps the latest global weights and each round's per-site evaluation."""

    def __init__(self, log: RoundLog, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = log
        self.latest: Parameters | None = None

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:
            self.latest = parameters
        return parameters, metrics

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Any]) -> tuple[float | None, dict[str, Scalar]]:
        sites = {str(r.metrics.get("site", i)): {"dice_candidate": float(r.metrics["dice_candidate"]),  # type: ignore[arg-type]
                                                 "dice_current": float(r.metrics["dice_current"]),  # type: ignore[arg-type]
                                                 "cases": r.num_examples}
                 for i, (_, r) in enumerate(results)}
        self.log.rounds.append({"round": server_round, "sites": dict(sorted(sites.items())),
                                "failures": len(failures)})
        return super().aggregate_evaluate(server_round, results, failures)


def initial_weights(seed: int, weights: Path | None) -> list[np.ndarray]:
    """The round-0 global model: ``weights`` (a candidate's weights.npz), else the seeded network."""
    if weights is not None:
        with np.load(weights) as saved:
            return [saved[f"arr_{i}"] for i in range(len(saved.files))]
    seed_everything(seed, 1)
    return [v.detach().numpy() for v in network().state_dict().values()]


def weights_sha256(weights: list[np.ndarray]) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, *weights)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def run_server(address: str, model_dir: Path, rounds: int, sites: int, seed: int = 0,
               weights: Path | None = None) -> Candidate:
    """Run the rounds with ``sites`` sites on ``address`` (host:port); write and return the candidate."""
    log = RoundLog()
    initial = initial_weights(seed, weights)
    strategy = RecordingFedAvg(
        log, fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=sites, min_evaluate_clients=sites,
        min_available_clients=sites, initial_parameters=ndarrays_to_parameters(initial))
    start_server(server_address=address, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    if strategy.latest is None or len(log.rounds) < rounds:
        raise RuntimeError(f"the federation ended after {len(log.rounds)} of {rounds} rounds")
    final = parameters_to_ndarrays(strategy.latest)
    return write_candidate(model_dir, final, log.rounds, sites)
