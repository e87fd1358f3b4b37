"""Model outputs -> label maps or class probabilities (pure numpy)."""

from __future__ import annotations

import numpy as np

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.result import ClassProbability


def activate(scores: np.ndarray, kind: str) -> np.ndarray:
    """Softmax over axis 0, a sigmoid, or nothing (the network already gives probabilities)."""
    scores = scores.astype(np.float64, copy=False)
    if kind == "softmax":
        shifted = np.exp(scores - scores.max(axis=0, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=0, keepdims=True))
    if kind == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-scores)))
    return scores


def check_channels(manifest: Manifest, n_channels: int) -> None:
    """Raise :class:`ModelError` unless the output has the channels the manifest declares."""
    out = manifest.output
    if manifest.task == "classification":
        needed = max(c.index for c in out.classes) + 1
    elif out.mode == "argmax":
        needed = max(lab.number for lab in out.labels) + 1
    else:
        needed = len(out.labels)
    if n_channels < needed:
        raise ModelError(f"model {manifest.id}: output has {n_channels} channel(s), the manifest needs {needed}")


def label_map(probabilities: np.ndarray, manifest: Manifest) -> np.ndarray:
    """``(C, *spatial)`` probabilities -> uint8 labels: argmax (channel = label number) or per-label threshold."""
    out = manifest.output
    if out.mode == "argmax":
        labels = np.argmax(probabilities, axis=0)
        known = np.isin(labels, [lab.number for lab in out.labels])
        return np.where(known, labels, 0).astype(np.uint8)
    result = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    for channel, lab in enumerate(out.labels):  # later labels win where they overlap
        result[probabilities[channel] > lab.threshold] = lab.number
    return result


def class_probabilities(vector: np.ndarray, manifest: Manifest) -> tuple[ClassProbability, ...]:
    return tuple(ClassProbability(spec=c, probability=float(vector[c.index])) for c in manifest.output.classes)
