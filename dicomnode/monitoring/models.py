"""Per-model monitoring: Prometheus collectors and a drift check of the model's outputs.

Collectors live in a :class:`prometheus_client.CollectorRegistry` passed in (the node exposes it at
``/metrics``). The drift check compares the mean of a model's last N outputs (segment volumes in ml,
class probabilities) with the reference range in its manifest (``output.reference``, or the outputs of
its ``[reference]``; ``output.drift_window``), and the mean distance of the last N inputs with the
``[reference]`` threshold; outside, the model is flagged in ``status`` and ``/metrics``. Inputs outside
the training distribution are counted (``dicomnode_model_outside_distribution``).
The last outputs are read back from the results of succeeded jobs, so that the check survives restarts.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.inference.distribution import DistributionCheck
from dicomnode.inference.manifest import Manifest
from dicomnode.jobs.models import Job
from dicomnode.jobs.status import JobStatus
from dicomnode.results.files import written_outputs

SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PROBABILITY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
ML_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 1500, 2000, 3000, 5000)


@dataclass(frozen=True)
class Drift:
    model: str
    output: str
    mean: float
    low: float
    high: float
    n: int

    @property
    def out_of_range(self) -> bool:
        return not self.low <= self.mean <= self.high

    def sentence(self) -> str:
        return (f"model {self.model}: mean {self.output} of the last {self.n} outputs is {self.mean:.3g}, "
                f"outside the reference range {self.low:g} to {self.high:g}")


INPUT_DISTANCE = "input distance"  # the drift window's name for the inputs' distances to [reference]
DISTANCE_BUCKETS = (0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50)


def reference_ranges(manifest: Manifest) -> dict[str, tuple[float, float]]:
    """The range the mean of the last N values of each followed output should stay in.

    ``output.reference`` (explicit ranges) first; otherwise, where the manifest has a ``[reference]``
    (``dicomnode/inference/distribution.py``): the reference outputs' mean +- 4 standard errors of an
    N-value mean, within their 1st-99th percentiles, and ``input distance`` (the mean distance of the last
    N inputs to the training distribution) from 0 to the reference's threshold.
    """
    ranges: dict[str, tuple[float, float]] = {}
    window = manifest.output.drift_window
    reference = manifest.reference
    if reference is not None:
        for name, out in reference.outputs.items():
            spread = 4.0 * out.std / window**0.5
            ranges[name] = (max(out.quantiles[0], out.mean - spread), min(out.quantiles[-1], out.mean + spread))
        ranges[INPUT_DISTANCE] = (0.0, reference.threshold)
    ranges.update(manifest.output.reference)
    return ranges


def drift_check(manifest: Manifest, recent: dict[str, list[float]]) -> list[Drift]:
    """One :class:`Drift` per output that has a reference range and a full window of recent values."""
    checks = []
    for name, (low, high) in reference_ranges(manifest).items():
        values = recent.get(name, [])[-manifest.output.drift_window:]
        if len(values) >= manifest.output.drift_window:
            checks.append(Drift(manifest.id, name, sum(values) / len(values), low, high, len(values)))
    return checks


def recent_outputs(sessions: sessionmaker[Session], results_dir: Path, manifest: Manifest) -> dict[str, list[float]]:
    """The outputs of the model's last ``drift_window`` succeeded jobs, oldest first, from their written results."""
    with sessions() as session:
        ids = session.scalars(select(Job.id).where(Job.model_id == manifest.id, Job.status == JobStatus.SUCCEEDED)
                              .order_by(Job.id.desc()).limit(manifest.output.drift_window)).all()
    recent: dict[str, list[float]] = {}
    for job_id in reversed(ids):
        outputs = written_outputs(results_dir, job_id)
        if outputs is None:
            continue
        for name, value in outputs.items():
            recent.setdefault(name, []).append(float(value))
    return recent


class ModelMetrics:
    """Inference seconds, jobs by outcome, output distributions and drift, per model."""

    def __init__(self, registry: CollectorRegistry, manifests: dict[str, Manifest]) -> None:
        self.registry = registry
        self.manifests = manifests
        self.seconds = Histogram("dicomnode_model_inference_seconds", "Model inference time per series",
                                 ["model", "version"], buckets=SECONDS_BUCKETS, registry=registry)
        self.jobs = Counter("dicomnode_model_jobs", "Jobs finished, by model and outcome", ["model", "outcome"],
                            registry=registry)
        self.probability = Histogram("dicomnode_model_probability", "Class probabilities given by a classifier",
                                     ["model", "output"], buckets=PROBABILITY_BUCKETS, registry=registry)
        self.volume_ml = Histogram("dicomnode_model_segment_ml", "Segment volumes given by a segmenter (ml)",
                                   ["model", "output"], buckets=ML_BUCKETS, registry=registry)
        self.drift = Gauge("dicomnode_model_drift", "1 when the mean of the last N outputs leaves the reference range",
                           ["model", "output"], registry=registry)
        self.recent_mean = Gauge("dicomnode_model_recent_mean", "Mean of the last N outputs (the drift window)",
                                 ["model", "output"], registry=registry)
        self.outside = Counter("dicomnode_model_outside_distribution",
                               "Inputs outside the model's training distribution (no positive finding was raised)",
                               ["model"], registry=registry)
        self.distance = Histogram("dicomnode_model_input_distance", "Distance of an input to the model's training "
                                  "distribution (robust z; see models/README.md [reference])", ["model"],
                                  buckets=DISTANCE_BUCKETS, registry=registry)
        self._recent: dict[str, dict[str, deque[float]]] = {}
        self._lock = threading.Lock()

    def seed(self, model_id: str, recent: dict[str, list[float]]) -> None:
        """Start the drift window from earlier jobs (see :func:`recent_outputs`)."""
        for name, values in recent.items():
            for value in values:
                self._remember(model_id, name, value)
        self._update_drift(model_id)

    def observe(self, model_id: str, seconds: float, outputs: dict[str, float],
                checked: DistributionCheck | None = None) -> None:
        """One job's inference time and outputs; ``checked``: its input's distance to the training distribution."""
        manifest = self.manifests[model_id]
        self.seconds.labels(model_id, manifest.version).observe(seconds)
        histogram = self.probability if manifest.task == "classification" else self.volume_ml
        for name, value in outputs.items():
            histogram.labels(model_id, name).observe(value)
            self._remember(model_id, name, value)
        if checked is not None:
            self.distance.labels(model_id).observe(checked.distance)
            if checked.outside:
                self.outside.labels(model_id).inc()
            self._remember(model_id, INPUT_DISTANCE, checked.distance)
        self._update_drift(model_id)

    def outcome(self, model_id: str, outcome: str) -> None:
        self.jobs.labels(model_id, outcome).inc()

    def _remember(self, model_id: str, name: str, value: float) -> None:
        window = self.manifests[model_id].output.drift_window
        with self._lock:
            self._recent.setdefault(model_id, {}).setdefault(name, deque(maxlen=window)).append(value)

    def _update_drift(self, model_id: str) -> None:
        with self._lock:
            recent = {k: list(v) for k, v in self._recent.get(model_id, {}).items()}
        for check in drift_check(self.manifests[model_id], recent):
            self.drift.labels(model_id, check.output).set(1 if check.out_of_range else 0)
            self.recent_mean.labels(model_id, check.output).set(check.mean)

    def warnings(self) -> list[str]:
        with self._lock:
            recent = {m: {k: list(v) for k, v in outs.items()} for m, outs in self._recent.items()}
        return [d.sentence() for m, r in recent.items() for d in drift_check(self.manifests[m], r) if d.out_of_range]

    def exposition(self) -> str:
        """The registry's samples in the Prometheus text format (appended to the node's /metrics)."""
        return generate_latest(self.registry).decode()


def drift_warnings(sessions: sessionmaker[Session], results_dir: Path, manifests: Iterable[Manifest]) -> list[str]:
    """Drift sentences for ``dicomnode status``, from the database and the results on disk."""
    return [d.sentence() for m in manifests for d in drift_check(m, recent_outputs(sessions, results_dir, m))
            if d.out_of_range]
