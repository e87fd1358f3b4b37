"""Model outputs -> label maps or class probabilities (pure numpy)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import FindingSpec, Manifest
from dicomnode.inference.result import ClassProbability, Component, SegmentFinding


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


def _channel(manifest: Manifest, number: int) -> int:
    """The probability channel of label ``number``: itself for argmax, its place in the list for threshold."""
    if manifest.output.mode == "argmax":
        return number
    return [lab.number for lab in manifest.output.labels].index(number)


def components(labels: np.ndarray, probabilities: np.ndarray, manifest: Manifest,
               voxel_mm3: float) -> tuple[np.ndarray, tuple[Component, ...]]:
    """The label map less components under ``output.min_component_mm3``, and the kept components.

    Components are face-connected (6-connected), per label, largest first. ``voxel_mm3 = 0`` (a 2D image) keeps every
    component: a minimum volume needs a slice thickness.
    """
    kept = labels.copy()
    found: list[Component] = []
    minimum = manifest.output.min_component_mm3 if voxel_mm3 > 0 else 0.0
    for lab in manifest.output.labels:
        pieces, _ = ndimage.label(labels == lab.number)
        probability = probabilities[_channel(manifest, lab.number)]
        for k, box in enumerate(ndimage.find_objects(pieces), start=1):
            if box is None:
                continue
            inside = pieces[box] == k
            voxels = int(inside.sum())
            if voxels * voxel_mm3 < minimum:
                kept[box][inside] = 0
                continue
            where = np.argwhere(inside) + [s.start for s in box]
            found.append(Component(
                label=lab.number, voxels=voxels, volume_mm3=voxels * voxel_mm3,
                max_probability=float(probability[box][inside].max()),
                slices=tuple(int(i) for i in np.unique(where[:, 0])),
                centroid=(float(where[:, 0].mean()), float(where[:, 1].mean()), float(where[:, 2].mean()))))
    return kept, tuple(sorted(found, key=lambda c: (c.label, -c.voxels)))


def segment_finding(parts: tuple[Component, ...], spec: FindingSpec) -> SegmentFinding:
    """The finding's probability: the highest of its label's kept components, 0 where there is none."""
    return SegmentFinding(spec=spec, probability=max((c.max_probability for c in parts if c.label == spec.label),
                                                     default=0.0))
