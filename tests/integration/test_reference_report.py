"""Local evaluation of a classifier: readers' SRs that call the finding present or leave it out, against
the node's classification of the same radiograph (the job's results sent to a real DCMTK storescp)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import highdicom as hd
import numpy as np
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset
from rich.console import Console
from sqlalchemy import select, update

from dicomnode.db import make_engine, make_sessionmaker, session_scope, utcnow
from dicomnode.evaluation.references import evaluate_pending
from dicomnode.evaluation.report import print_evaluation
from dicomnode.inference.registry import Registry
from dicomnode.jobs.models import ReferenceObject, Study
from dicomnode.jobs.status import StudyState
from dicomnode.migrate import upgrade
from dicomnode.monitoring.evaluation import EvaluationCollector
from tests.conftest import make_settings
from tests.support.models import write_classifier
from tests.support.spooled import run_jobs, spool
from tests.support.synthetic import make_radiograph

FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")


def report(source: Dataset, description: str, findings: list[hd.sr.CodedConcept]) -> Dataset:
    """A reader's Comprehensive SR on ``source`` listing ``findings`` as CODE items."""
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report"))
    root.ContentSequence = hd.sr.ContentSequence([hd.sr.CodeContentItem(
        name=FINDING, value=f, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS) for f in findings])
    return hd.sr.ComprehensiveSR(evidence=[source], content=root, series_instance_uid=hd.UID(), series_number=50,
                                 sop_instance_uid=hd.UID(), instance_number=1, manufacturer="Reader",
                                 series_description=description)


def test_reader_reports_agree_or_not_with_the_classifier(tmp_path: Path) -> None:
    write_classifier(tmp_path / "models")
    settings = make_settings(tmp_path / "data", models_dir=tmp_path / "models",
                             reference={"series_description": "^READ"})
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    pixels = np.full((128, 128), 1000, dtype=np.uint16)
    pixels[48:80, 48:80] = 3000
    pixels[0, 0], pixels[-1, -1] = 0, 4095
    source = make_radiograph(pixels)
    run_jobs(settings, sessions, [[source]], tmp_path / "sink", "region-classifier", "2.1")
    manifest = Registry(settings.models_dir).manifests["region-classifier"]
    (spec,) = manifest.output.classes
    probability = json.loads((settings.results_dir / "job-1" / "results.json").read_text())["outputs"][spec.label]
    node_positive = probability >= spec.threshold
    opacity = hd.sr.CodedConcept(spec.finding.value, spec.finding.scheme, spec.finding.meaning)

    present = report(source, "READ by radiologist", [opacity])
    absent = report(source, "READ by radiologist", [])
    other = report(source, "AI summary", [opacity])  # no reference rule matches
    spool(settings, sessions, [present, absent, other])
    with session_scope(sessions) as session:  # the study is complete again (what the sweep does after idle)
        session.execute(update(Study).values(state=StudyState.ROUTED))
    assert evaluate_pending(settings, sessions, Registry(settings.models_dir).manifests) == 2

    with sessions() as session:
        rows = {r.sop_instance_uid: r for r in session.scalars(select(ReferenceObject))}
    assert rows[str(present.SOPInstanceUID)].agrees is node_positive
    assert rows[str(absent.SOPInstanceUID)].agrees is (not node_positive)
    assert (rows[str(other.SOPInstanceUID)].outcome, rows[str(other.SOPInstanceUID)].reason) == \
        ("ignored", "no reference rule matched")
    registry = CollectorRegistry()
    registry.register(EvaluationCollector(sessions))
    assert registry.get_sample_value("dicomnode_model_reference_agreement", {"model": "region-classifier"}) == 0.5

    console = Console(record=True, width=160)
    assert print_evaluation(sessions, "region-classifier", None, console) == 2
    assert "agree with the model in 1 of 2 (50%)" in console.export_text()
    assert print_evaluation(sessions, "region-classifier", utcnow() + dt.timedelta(days=1), console) == 0  # --since
