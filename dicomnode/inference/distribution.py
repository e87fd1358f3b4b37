"""Is this input like the ones the model was trained on? A distance to the manifest's ``[reference]``.

The training script writes, from a few hundred draws of its training generators prepared as the engine
prepares a series, the statistics of the network input (after orientation, resampling or 2D fit, and the
manifest's intensity steps) and of the outputs on them. For one input ``x`` the engine computes its
*features*:

- the quantiles of its values at ``levels`` (an intensity histogram, summarised);
- for 2D models with a ``template`` (the mean training input, block-averaged to ``template_shape``): the
  Pearson correlation of ``x``, block-averaged the same way, with the template: where the bright and dark
  parts of the picture lie (a radiograph whose contrast is inverted correlates negatively).

Its **distance** is the largest absolute deviation of a feature from the reference median, in units of the
reference's standard deviation of that feature (at least ``FLOOR``): ``max_f |v_f - m_f| / s_f``. (The
interquartile range was tried first: features with a narrow middle and long tails then gave the reference
draws themselves distances up to 15.)
The input is **outside the training distribution** when the distance exceeds the manifest's
``threshold``, which the training script sets at ``MARGIN`` times the 99.5th percentile of the distances of
the reference draws themselves. The engine then raises no positive finding; the SR says so and
``/metrics`` counts it (``dicomnode_model_outside_distribution``); the drift check compares the mean
distance of the last N inputs, and the mean of each output, with the same reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicomnode.inference.manifest import Reference

LEVELS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
TEMPLATE_SHAPE = (16, 16)
FLOOR = 0.05  # the smallest spread a feature may have (normalised units, or correlation)
MARGIN = 1.2  # threshold = MARGIN x the 99.5th percentile of the reference draws' own distances (1.5 flagged 74 % of
# inverted radiographs of the independent family, 1.2 flags 90 % with no false alarm on 150 of each family)
PERCENTILE = 99.5
OUTSIDE = "input outside the model's training distribution"


@dataclass(frozen=True)
class DistributionCheck:
    """The distance of one input to the model's reference, and the manifest's threshold."""

    distance: float
    threshold: float

    @property
    def outside(self) -> bool:
        return self.distance > self.threshold


def _blocks(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` averaged over a grid of ``shape`` blocks (edges cropped to a multiple of the block)."""
    steps = [max(1, n // m) for n, m in zip(x.shape, shape, strict=True)]
    crop = x[tuple(slice(0, s * m) for s, m in zip(steps, shape, strict=True))]
    out: np.ndarray = crop.reshape([v for s, m in zip(steps, shape, strict=True) for v in (m, s)]).mean(
        axis=tuple(range(1, 2 * len(shape), 2)))
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def features(x: np.ndarray, levels: Sequence[float], template: np.ndarray | None = None) -> np.ndarray:
    """The quantiles of ``x`` at ``levels`` and, with a template, the correlation with it."""
    values = np.quantile(np.asarray(x, dtype=np.float64).ravel(), list(levels))
    if template is None:
        return values
    if x.ndim != template.ndim or any(n < m for n, m in zip(x.shape, template.shape, strict=True)):
        return np.append(values, 0.0)
    return np.append(values, _correlation(_blocks(np.asarray(x, dtype=np.float64), template.shape), template))


def _template(reference: Reference) -> np.ndarray | None:
    if not reference.template:
        return None
    return np.asarray(reference.template, dtype=np.float64).reshape(reference.template_shape)


def distance(reference: Reference, x: np.ndarray) -> float:
    """The largest robust z of ``x``'s features against ``reference``."""
    extra = reference.correlation if reference.template and reference.correlation is not None else None
    centre = np.asarray(reference.quantiles + ((extra[0],) if extra else ()))
    scale = np.asarray(reference.scale + ((extra[1],) if extra else ()))
    v = features(x, reference.levels, _template(reference) if extra else None)
    return float(np.max(np.abs(v - centre) / np.maximum(scale, FLOOR)))


def check(reference: Reference, x: np.ndarray) -> DistributionCheck:
    """``x``: the network input of one series, ``(C, *grid)``; its first channel is compared."""
    return DistributionCheck(distance(reference, x[0]), reference.threshold)


def _spread(values: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.maximum(values.std(axis=0), FLOOR)
    return out


def build_reference(inputs: Sequence[np.ndarray], outputs: Mapping[str, Sequence[float]],
                    template: bool) -> dict[str, Any]:
    """The ``[reference]`` of a model from its prepared training inputs (each ``(*grid)``) and its outputs on them."""
    blocks = None
    if template:
        blocks = np.mean([_blocks(np.asarray(x, dtype=np.float64), TEMPLATE_SHAPE) for x in inputs], axis=0)
    f = np.stack([features(x, LEVELS, blocks) for x in inputs])
    centre, scale = np.median(f, axis=0), _spread(f)
    distances = np.max(np.abs(f - centre) / scale, axis=1)
    out: dict[str, Any] = {
        "samples": len(inputs), "levels": list(LEVELS),
        "quantiles": [round(float(v), 5) for v in centre[:len(LEVELS)]],
        "scale": [round(float(v), 5) for v in scale[:len(LEVELS)]],
        "threshold": round(float(MARGIN * np.percentile(distances, PERCENTILE)), 3),
        "outputs": {name: {"quantiles": [round(float(v), 6) for v in np.quantile(np.asarray(values), LEVELS)],
                           "mean": round(float(np.mean(values)), 6), "std": round(float(np.std(values)), 6)}
                    for name, values in outputs.items()},
    }
    if blocks is not None:
        out["template_shape"] = list(TEMPLATE_SHAPE)
        out["template"] = [round(float(v), 4) for v in blocks.ravel()]
        out["correlation"] = [round(float(centre[-1]), 5), round(float(scale[-1]), 5)]
    return out


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def reference_toml(reference: Mapping[str, Any]) -> str:
    """``reference`` as the manifest's ``[reference]`` and ``[reference.outputs."<name>"]`` tables."""
    lines = ["# The training inputs' statistics after preprocessing and the outputs on them (models/README.md,",
             "# dicomnode/inference/distribution.py): a distance over `threshold` = outside the training distribution.",
             "[reference]"]
    lines += [f"{key} = {_toml(value)}" for key, value in reference.items() if key != "outputs"]
    for name, stats in reference["outputs"].items():
        lines += ["", f"[reference.outputs.{_toml(name)}]"]
        lines += [f"{key} = {_toml(value)}" for key, value in stats.items()]
    return "\n".join(lines) + "\n"
