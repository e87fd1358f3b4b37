"""Per-model field quality for Prometheus, read from the evaluation table when scraped.

- ``dicomnode_model_reference_evaluations{model}``: references evaluated against the model's results;
- ``dicomnode_model_reference_dice{model,segment}``: mean Dice with the readers' references;
- ``dicomnode_model_reference_volume_difference_ml{model,segment}``: mean reference minus node volume;
- ``dicomnode_model_reference_agreement{model}``: share of readers' reports that agree with a classifier.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.jobs.models import ReferenceObject, ReferenceSegment


class EvaluationCollector(Collector):
    """The evaluation table's aggregates per model and segment (module docstring)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            counts = session.execute(select(ReferenceObject.model_id, func.count())
                                     .where(ReferenceObject.outcome == "evaluated")
                                     .group_by(ReferenceObject.model_id)).all()
            agreement = session.execute(
                select(ReferenceObject.model_id, func.avg(case((ReferenceObject.agrees.is_(True), 1.0), else_=0.0)))
                .where(ReferenceObject.agrees.is_not(None)).group_by(ReferenceObject.model_id)).all()
            means = session.execute(
                select(ReferenceObject.model_id, ReferenceSegment.label, func.avg(ReferenceSegment.dice),
                       func.avg(ReferenceSegment.reference_ml - ReferenceSegment.node_ml))
                .join(ReferenceSegment.reference).group_by(ReferenceObject.model_id, ReferenceSegment.label)).all()
        evaluations = CounterMetricFamily("dicomnode_model_reference_evaluations",
                                          "References (readers' corrected SEGs) evaluated, by model.",
                                          labels=["model"])
        for model, count in counts:
            evaluations.add_metric([str(model)], int(count))
        dice = GaugeMetricFamily("dicomnode_model_reference_dice",
                                 "Mean Dice of the model's segments with the readers' references.",
                                 labels=["model", "segment"])
        difference = GaugeMetricFamily("dicomnode_model_reference_volume_difference_ml",
                                       "Mean reference minus model segment volume (ml).", labels=["model", "segment"])
        for model, label, mean_dice, mean_difference in means:
            dice.add_metric([str(model), str(label)], float(mean_dice))
            difference.add_metric([str(model), str(label)], float(mean_difference))
        agrees = GaugeMetricFamily("dicomnode_model_reference_agreement",
                                   "Share of readers' reports whose findings agree with the classifier's.",
                                   labels=["model"])
        for model, share in agreement:
            agrees.add_metric([str(model)], float(share))
        yield evaluations
        yield agrees
        yield dice
        yield difference
