"""How well can anything do on the independent radiographs? Two diagnostics for issue 26's target; neither
ships a model, and nothing here feeds a shipped model's training or its operating point.

    .venv/bin/python -m training.ceiling ideal [--n 300]                  # seconds
    .venv/bin/python -m training.ceiling oracle [--steps 6000 --pool 8000]  # tens of minutes

- ``ideal``: the ideal observer's AUC with the signal and the background known exactly (SKE/BKE), at the
  model's input size. For a seed, ``training.independent`` draws the same patient and acquisition with and
  without the opacity (same noise) and once more with other noise; in (near-)white Gaussian noise the
  observer's detectability is d' = ||positive - negative|| / sigma, and its AUC Phi(d' / sqrt 2). Averaged
  over positives this is an upper bound for every observer: a real one knows neither where the opacity is
  nor the anatomy behind it.
- ``oracle``: the cxr-demo network and recipe trained **on the independent family itself** (its own
  training seeds ``1_000_000 + i``, disjoint from its validation and test seeds), scored on its test seeds
  as ``tests/unit/test_training.py`` scores the shipped model: what this network and budget reach when the
  generator gap is removed.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from dicomnode.inference.geometry import resample
from training import independent
from training.common import auc
from training.train_cxr import FULL, PHANTOM_SHAPE, SIZE, fit, network, prepare

FIRST = independent.TEST_SEED_BASE + 5_000  # the seeds tests/unit/test_training.py scores the shipped model on
ORACLE_TRAINING = 1_000_000  # the independent family's seeds for the oracle's training (below validation, test)


def detectability(seed: int) -> float:
    """d' of the ideal SKE/BKE observer for ``seed``'s opacity, on the model's input grid."""
    def grid(image: np.ndarray) -> np.ndarray:
        out: np.ndarray = resample(image.astype(np.float64), SIZE)
        return out

    positive = grid(independent.radiograph(seed, PHANTOM_SHAPE, finding=True).image)
    negative = grid(independent.radiograph(seed, PHANTOM_SHAPE, finding=False).image)
    other = grid(independent.radiograph(seed, PHANTOM_SHAPE, finding=False, noise=seed + 1).image)
    sigma = float((negative - other).std()) / math.sqrt(2)
    return float(np.linalg.norm(positive - negative)) / sigma


def ideal(n: int) -> dict[str, float]:
    d = np.array([detectability(FIRST + i) for i in range(n)])
    phi = 0.5 * (1 + np.vectorize(math.erf)(d / 2))  # Phi(d / sqrt 2) = (1 + erf(d / 2)) / 2
    return {"positives": n, "auc_bound": round(float(phi.mean()), 4), "d_below_2": round(float((d < 2).mean()), 3),
            "d_below_3": round(float((d < 3).mean()), 3), "d_median": round(float(np.median(d)), 2)}


def oracle(steps: int, pool: int, seed: int = 0, threads: int = 1) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    drawn = [independent.radiograph(ORACLE_TRAINING + i, PHANTOM_SHAPE) for i in range(pool)]
    x_pool = np.stack([prepare(p.image) for p in drawn])[:, None]
    y_pool = np.asarray([p.finding for p in drawn])
    model = fit(network(), x_pool, y_pool, rng, steps, FULL["batch"], FULL["lr"], log=False)  # the shipped recipe
    test = [independent.radiograph(FIRST + i, PHANTOM_SHAPE) for i in range(200)]
    with torch.no_grad():
        logits = model(torch.from_numpy(np.stack([prepare(p.image) for p in test])[:, None]))[:, 0].numpy()
    truth = np.asarray([p.finding for p in test])
    scores = 1 / (1 + np.exp(-logits))
    return {"steps": steps, "pool": pool, "auc": round(auc(scores, truth), 4),
            "specificity_at_0.5": round(float(((scores < 0.5) & ~truth).sum() / (~truth).sum()), 3),
            "sensitivity_at_0.5": round(float(((scores >= 0.5) & truth).sum() / truth.sum()), 3),
            "seconds": round(time.perf_counter() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["ideal", "oracle"])
    parser.add_argument("--n", type=int, default=300, help="ideal: positives")
    parser.add_argument("--steps", type=int, default=6000, help="oracle: training steps of 16")
    parser.add_argument("--pool", type=int, default=8000, help="oracle: training radiographs drawn once")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(ideal(args.n) if args.what == "ideal" else oracle(args.steps, args.pool, threads=args.threads))


if __name__ == "__main__":
    main()
