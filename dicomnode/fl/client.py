"""``dicomnode fl client``: one site trains the demonstration CT model on its own export; weights travel.

The site's cases never leave it: the client reads its ``datalist.json``, keeps the last third of the
cases as its local evaluation set, and sends the server only the network's weights (after ``fit``) and
three numbers (after ``evaluate``: the Dice of the global model and of the model the site runs now, on
its evaluation set, for the promotion gate).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import NumPyClient, start_client

from dicomnode.fl.data import Case, load_cases, padded, pooled_dice, split
from dicomnode.fl.network import loss, network, ort_session, sample_patch, seed_everything


@dataclass(frozen=True)
class LocalTraining:
    """How a site trains each round: ``epochs`` passes over its cases, at most ``steps`` steps each,
    on random ``patch`` crops (the whole volume when smaller), with seeded order and crops."""

    epochs: int = 1
    steps: int = 0  # 0: no cap
    patch: int = 32
    lr: float = 2e-3
    seed: int = 0


class SiteClient(NumPyClient):
    """Flower's NumPy client for one site (module docstring)."""

    def __init__(self, name: str, cases: list[Case], training: LocalTraining,
                 current: Callable[[np.ndarray], np.ndarray] | None) -> None:
        import torch

        seed_everything(training.seed, 1)
        self.torch = torch
        self.name = name
        self.train_cases, self.eval_cases = split(cases)
        self.training = training
        self.model = network()
        self.current_dice = pooled_dice(padded(current), self.eval_cases) if current is not None else 0.0
        self.rng = np.random.default_rng(training.seed)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [v.detach().cpu().numpy() for v in self.model.state_dict().values()]

    def _set(self, parameters: list[np.ndarray]) -> None:
        state = self.model.state_dict()
        self.model.load_state_dict(OrderedDict((k, self.torch.from_numpy(np.asarray(p)).to(state[k].dtype))
                                               for k, p in zip(state, parameters, strict=True)))

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        self._set(parameters)
        torch, training = self.torch, self.training
        optimiser = torch.optim.AdamW(self.model.parameters(), lr=training.lr, weight_decay=1e-5)
        loss_fn = loss()
        self.model.train()
        losses = []
        for _ in range(training.epochs):
            order = self.rng.permutation(len(self.train_cases))
            for step, index in enumerate(order):
                if training.steps and step >= training.steps:
                    break
                case = self.train_cases[int(index)]
                x, y = sample_patch(case.image, case.label, training.patch, self.rng)
                step_loss = loss_fn(self.model(torch.from_numpy(x)[None, None]), torch.from_numpy(y)[None, None])
                optimiser.zero_grad()
                step_loss.backward()
                optimiser.step()
                losses.append(float(step_loss.item()))
        self.model.eval()
        return self.get_parameters({}), len(self.train_cases), {"loss": float(np.mean(losses)) if losses else 0.0}

    def _predict(self, image: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            out: np.ndarray = self.model(self.torch.from_numpy(np.ascontiguousarray(image))[None, None])[0, 0].numpy()
        return out

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        self._set(parameters)
        self.model.eval()
        candidate = pooled_dice(padded(self._predict), self.eval_cases)
        return 1.0 - candidate, len(self.eval_cases), {
            "site": self.name, "dice_candidate": candidate, "dice_current": self.current_dice}


def onnx_predict(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The model the site runs now (its ONNX file), as image -> logits."""
    run = ort_session(path, 1)
    return lambda image: run(image[None, None])[0, 0]


def run_client(address: str, name: str, datalist: Path, current_onnx: Path | None, training: LocalTraining) -> None:
    """Connect to the Flower server at ``address`` (host:port) and take part until it ends the rounds."""
    current = onnx_predict(current_onnx) if current_onnx is not None else None
    client = SiteClient(name, load_cases(datalist), training, current)
    start_client(server_address=address, client=client.to_client(), insecure=True)
