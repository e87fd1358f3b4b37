from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dicomnode.inference.manifest import Manifest
from dicomnode.monitoring.models import ModelMetrics, drift_check
from tests.support.models import write_classifier


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    return Manifest.read(write_classifier(tmp_path) / "manifest.toml")  # reference Opacity [0, 0.3], window 2


def samples(metrics: ModelMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics.exposition()) for s in f.samples}


def test_drift_needs_a_full_window_and_compares_the_mean(manifest: Manifest) -> None:
    assert drift_check(manifest, {"Opacity": [0.9]}) == []
    (ok,) = drift_check(manifest, {"Opacity": [0.9, 0.1, 0.2]})  # last two: mean 0.15
    assert not ok.out_of_range
    (bad,) = drift_check(manifest, {"Opacity": [0.1, 0.5, 0.6]})
    assert bad.out_of_range
    assert bad.sentence() == ("model region-classifier: mean Opacity of the last 2 outputs is 0.55, "
                              "outside the reference range 0 to 0.3")


def test_metrics_move_and_drift_is_flagged(manifest: Manifest) -> None:
    metrics = ModelMetrics(CollectorRegistry(), {manifest.id: manifest})
    metrics.observe(manifest.id, 0.2, {"Opacity": 0.1})
    metrics.outcome(manifest.id, "succeeded")
    key = (("model", "region-classifier"), ("output", "Opacity"))
    assert samples(metrics)[("dicomnode_model_probability_count", key)] == 1
    assert ("dicomnode_model_drift", key) not in samples(metrics)  # not a full window yet
    metrics.observe(manifest.id, 0.3, {"Opacity": 0.9})
    found = samples(metrics)
    assert found[("dicomnode_model_inference_seconds_count", (("model", "region-classifier"), ("version", "2.1")))] == 2
    assert found[("dicomnode_model_jobs_total", (("model", "region-classifier"), ("outcome", "succeeded")))] == 1
    assert found[("dicomnode_model_drift", key)] == 1
    assert found[("dicomnode_model_recent_mean", key)] == pytest.approx(0.5)
    assert metrics.warnings() == ["model region-classifier: mean Opacity of the last 2 outputs is 0.5, "
                                  "outside the reference range 0 to 0.3"]
    metrics.seed(manifest.id, {"Opacity": [0.1, 0.1]})
    assert samples(metrics)[("dicomnode_model_drift", key)] == 0 and metrics.warnings() == []
