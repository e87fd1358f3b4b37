"""Federated against local-only training of the CT demonstration model on three phantom sites.

    PYTHONPATH=. python bench/fl.py [--rounds 5] [--cases 9] [--shape 32] [--epochs 3] [--patch 32]

Each site (training/sites.py: different nodule-count distributions) keeps the last third of its cases for
evaluation. Per round, every site trains ``--epochs`` local epochs (one step per training case) from the
global model (``dicomnode fl client``'s
SiteClient.fit), Flower's FedAvg aggregation (``flwr.server.strategy.aggregate.aggregate``, weighted by
case counts) makes the next global model; alongside, each site trains a local-only model the same number
of epochs from the same start. Printed per round: Dice (pooled over cases, probability 0.5) of the
federated model and of each site's local-only model, on each site's evaluation set and on a pooled
held-out set drawn from all three distributions. The rounds run in-process (the gRPC transport is what
tests/integration/test_federation.py covers); Dice, not speed, is the figure here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.server.strategy.aggregate import aggregate

from dicomnode.fl.client import LocalTraining, SiteClient
from dicomnode.fl.data import Case, load_cases, padded, pooled_dice
from training.common import DISCLAIMER
from training.sites import POOLED_SEED, SITES, Site, write_site


def site_cases(root: Path, site: Site, cases: int, shape: int) -> list[Case]:
    return load_cases(write_site(site, root / site.name, cases, (shape,) * 3))


def dice_of(client: SiteClient, weights: list[np.ndarray], cases: list[Case]) -> float:
    client._set(weights)  # the bench reads the client's model directly
    client.model.eval()
    return pooled_dice(padded(client._predict), cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", type=int, default=9, help="cases per site (a third evaluate)")
    parser.add_argument("--shape", type=int, default=32, help="phantom edge, voxels of 2 mm")
    parser.add_argument("--epochs", type=int, default=3, help="local epochs per round")
    parser.add_argument("--patch", type=int, default=32)
    args = parser.parse_args()
    print(f"{DISCLAIMER}; {args.rounds} rounds, {args.cases} cases per site of {args.shape}^3, "
          f"{args.epochs} local epochs per round")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = {s.name: site_cases(root, s, args.cases, args.shape) for s in SITES}
        pooled_site = Site("pooled", POOLED_SEED, (0, 1, 2, 3), (0.25, 0.25, 0.25, 0.25))
        pooled = site_cases(root, pooled_site, 3 * max(1, args.cases // 3), args.shape)
    training = LocalTraining(epochs=args.epochs, patch=args.patch, seed=0)
    federated = {s.name: SiteClient(s.name, data[s.name], training, None) for s in SITES}
    local = {s.name: SiteClient(s.name, data[s.name], training, None) for s in SITES}
    global_weights = federated[SITES[0].name].get_parameters({})
    local_weights = {name: list(global_weights) for name in local}
    names = [s.name for s in SITES]
    print(f"{'round':>5}  {'model':<14}" + "".join(f"{n:>9}" for n in names) + f"{'pooled':>9}")
    for round_ in range(1, args.rounds + 1):
        results = []
        for name in names:
            weights, n, _ = federated[name].fit(global_weights, {})
            results.append((weights, n))
            local_weights[name] = local[name].fit(local_weights[name], {})[0]
        global_weights = aggregate(results)
        probe = federated[names[0]]
        row = [dice_of(probe, global_weights, federated[n].eval_cases) for n in names]
        fed_pooled = dice_of(probe, global_weights, pooled)
        print(f"{round_:>5}  {'federated':<14}" + "".join(f"{d:>9.3f}" for d in row) + f"{fed_pooled:>9.3f}")
        for name in names:
            own = dice_of(local[name], local_weights[name], local[name].eval_cases)
            on_pooled = dice_of(local[name], local_weights[name], pooled)
            cells = "".join(f"{own:>9.3f}" if n == name else f"{'':>9}" for n in names)
            ratio = fed_pooled / on_pooled if on_pooled else float("inf")
            print(f"{'':>5}  {'local ' + name:<14}" + cells
                  + f"{on_pooled:>9.3f}  (federated/local pooled {ratio:.2f})")
    print(f"wall {time.perf_counter() - started:.0f} s (2 shared cores under other load)")


if __name__ == "__main__":
    main()
