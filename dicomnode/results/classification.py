"""Class probabilities + source image(s) -> a Comprehensive 3D SR holding a TID 1500 Measurement Report.

Per class, one measurement group (TID 1501) referencing the source images: a qualitative evaluation
(the finding, Present or Absent at the manifest's operating threshold) and the probability as a numeric
measurement. The model, its version and intended use are in the algorithm identification (TID 4019);
the series description starts with POSITIVE or negative, so that a worklist can sort on it. Each group is
drawn on the image (see :mod:`dicomnode.results.sr`) where its evidence map is highest, or at the image's
centre for a class without one, labelled "Opacity present, p = 0.88 (research demonstration; ...)".
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicomnode.inference.distribution import OUTSIDE as OUTSIDE_DISTRIBUTION
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.result import ClassificationResult
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.sr import (
    add_comment,
    finding_group,
    observation_context,
    procedure_reported,
    report_sr,
    strongest_anchor,
)


def summary(result: ClassificationResult, demonstration: bool = False) -> str:
    """``POSITIVE <labels>`` or ``negative``; a demonstration model's never sorts a worklist as positive:
    ``DEMO present: <labels>`` or ``DEMO negative``."""
    positive = [c.spec.label for c in result.classes if c.positive]
    if demonstration:
        return "DEMO " + ("present: " + ", ".join(positive) if positive else "negative")
    return ("POSITIVE " + ", ".join(positive)) if positive else "negative"


def build_classification_sr(
    sources: Sequence[Dataset],
    result: ClassificationResult,
    manifest: Manifest,
    identity: ResultIdentity,
    evidence: Sequence[Dataset] = (),
    explanations: dict[int, np.ndarray] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The report: one measurement group per class, each referencing the source images; ``explanations``:
    class index -> evidence map in source order (``(image or frame, row, column)``), where a group is drawn."""
    maps = explanations or {}
    groups = [finding_group(identity.uid("tracking", str(item.spec.index)),
                            f"{item.spec.label} (class {item.spec.index})", item.spec.finding, item.positive,
                            item.probability, manifest, sources,
                            strongest_anchor(sources, maps[item.spec.index]) if item.spec.index in maps else None)
              for item in result.classes]
    for item, group in zip(result.classes, groups, strict=True):
        if item.outside:  # the engine's distribution check (dicomnode/inference/distribution.py)
            add_comment(group, OUTSIDE_DISTRIBUTION)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(manifest),
        procedure_reported=procedure_reported(str(sources[0].get("Modality", ""))),
        imaging_measurements=groups,
    )
    return report_sr([*evidence, *sources], report, identity, manifest,
                     f"AI {summary(result, manifest.demonstration)} ({manifest.id})", "classification SR")
