"""A site's exported cases (``dicomnode export training`` layout) as normalised RAS arrays."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicomnode.fl.network import normalise


@dataclass(frozen=True)
class Case:
    image: np.ndarray  # (x, y, z) float32, normalised as the model expects
    label: np.ndarray  # (x, y, z) uint8, 1 inside a nodule


def load_cases(datalist: Path) -> list[Case]:
    """Every case of a ``datalist.json`` ("training" key), reoriented to RAS and normalised."""
    import nibabel as nib

    root = datalist.parent
    cases = []
    for entry in json.loads(datalist.read_text())["training"]:
        image = nib.as_closest_canonical(nib.load(root / entry["image"]))
        label = nib.as_closest_canonical(nib.load(root / entry["label"]))
        cases.append(Case(normalise(np.asarray(image.dataobj, dtype=np.float32)),
                          (np.asarray(label.dataobj) > 0).astype(np.uint8)))
    return cases


def split(cases: list[Case], evaluation_share: float = 1 / 3) -> tuple[list[Case], list[Case]]:
    """Training and local evaluation cases: the last ``evaluation_share`` (at least one) evaluate."""
    n_eval = max(1, round(len(cases) * evaluation_share))
    if len(cases) <= n_eval:
        raise ValueError(f"a site needs more than {n_eval} case(s) to train and evaluate; it has {len(cases)}")
    return cases[:-n_eval], cases[-n_eval:]


def pooled_dice(predict: Callable[[np.ndarray], np.ndarray], cases: list[Case]) -> float:
    """Dice pooled over ``cases`` of ``predict(image) -> logits`` (same shape), at probability 0.5."""
    both = total = 0
    for case in cases:
        mask = predict(case.image) > 0  # logit > 0 <=> probability > 0.5
        truth = case.label > 0
        both += 2 * int((mask & truth).sum())
        total += int(mask.sum()) + int(truth.sum())
    return 1.0 if total == 0 else both / total


def padded(predict: Callable[[np.ndarray], np.ndarray], multiple: int = 8) -> Callable[[np.ndarray], np.ndarray]:
    """``predict`` on a volume padded (edge values) to a multiple of ``multiple`` per axis, cropped back."""
    def run(image: np.ndarray) -> np.ndarray:
        pad = [(0, -n % multiple) for n in image.shape]
        out = predict(np.pad(image, pad, mode="edge"))
        return out[tuple(slice(0, n) for n in image.shape)]
    return run
