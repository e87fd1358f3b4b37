"""Class probabilities + source image(s) -> a Comprehensive 3D SR holding a TID 1500 Measurement Report.

Per class, one measurement group (TID 1501) referencing the source images: a qualitative evaluation
(the finding, Present or Absent at the manifest's operating threshold) and the probability as a numeric
measurement. The model, its version and intended use are in the algorithm identification (TID 4019);
the series description starts with POSITIVE or negative, so that a worklist can sort on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from dicomnode.inference.manifest import Manifest
from dicomnode.inference.result import ClassificationResult
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.sr import finding_group, observation_context, procedure_reported, report_sr


def summary(result: ClassificationResult) -> str:
    positive = [c.spec.label for c in result.classes if c.positive]
    return ("POSITIVE " + ", ".join(positive)) if positive else "negative"


def build_classification_sr(
    sources: Sequence[Dataset],
    result: ClassificationResult,
    manifest: Manifest,
    identity: ResultIdentity,
    evidence: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The report: one measurement group per class, each referencing the source images."""
    groups = [finding_group(identity.uid("tracking", str(item.spec.index)),
                            f"{item.spec.label} (class {item.spec.index})", item.spec.finding, item.positive,
                            item.probability, manifest, sources) for item in result.classes]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(manifest),
        procedure_reported=procedure_reported(str(sources[0].get("Modality", ""))),
        imaging_measurements=groups,
    )
    return report_sr([*evidence, *sources], report, identity, f"AI {summary(result)} ({manifest.id})",
                     "classification SR")
