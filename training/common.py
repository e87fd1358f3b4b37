"""What the training scripts share: arguments, metrics, SHA-256, versions and the disclaimer.

Seeding, ONNX export and the ONNX Runtime session come from :mod:`dicomnode.fl.network`, which the
federated rounds share; nothing in ``dicomnode/`` imports ``training/``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DISCLAIMER = "research demonstration model trained on synthetic phantoms; not for clinical use"
REPO = Path(__file__).resolve().parent.parent


def arguments(description: str, default_out: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=REPO / default_out, help="output folder (model, manifest, metrics)")
    parser.add_argument("--seed", type=int, default=0, help="the training seed")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--smoke", action="store_true", help="a few iterations on tiny data (CI)")
    parser.add_argument("--retune", action="store_true",
                        help="keep --out's model.onnx and training record; choose, validate and describe again")
    return parser.parse_args()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "monai", "numpy", "scipy", "onnx", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted as one half)."""
    pos, neg = scores[truth], scores[~truth]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    p, t = prediction.astype(bool), truth.astype(bool)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else float(2 * int((p & t).sum()) / total)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class Family:
    """One phantom generator, its held-out seed ranges and its two drawing functions (same signatures)."""

    name: str
    radiograph: Callable[..., Any]  # (seed, shape, finding) -> Radiograph
    ct_chest: Callable[..., Any]  # (seed, shape, spacing, nodules) -> ChestCT
    validation: int  # first validation seed (thresholds and minimum volumes are chosen on these)
    test: int  # first test seed (no choice is tuned on these)
    trained_on: bool  # False: the independent family, never drawn from in training


def families() -> list[Family]:
    """training.phantoms, training.domain and, when present, training.independent (written without reading
    phantoms.py; out-of-generator validation only: never trained on)."""
    from training import domain, phantoms

    out = [Family("phantoms", phantoms.radiograph, phantoms.ct_chest, phantoms.VALIDATION_SEED_BASE,
                  phantoms.TEST_SEED_BASE, True),
           Family("randomised", lambda s, shape=None, finding=None: domain.radiograph(s, None, finding),
                  domain.ct_chest, phantoms.VALIDATION_SEED_BASE, phantoms.TEST_SEED_BASE, True)]
    try:
        independent = importlib.import_module("training.independent")
    except ImportError:
        return out
    if not all(hasattr(independent, name) for name in ("radiograph", "ct_chest", "VALIDATION_SEED_BASE",
                                                           "TEST_SEED_BASE")):
        return out  # not written yet
    out.append(Family("independent", independent.radiograph, independent.ct_chest,
                      int(independent.VALIDATION_SEED_BASE), int(independent.TEST_SEED_BASE), False))
    return out
