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
from pydicom.sr.codedict import codes

from dicomnode.inference.manifest import Manifest
from dicomnode.inference.result import ClassificationResult
from dicomnode.results.codes import ABSENT, NO_UNITS, PRESENT, PROBABILITY
from dicomnode.results.equipment import MANUFACTURER, ResultIdentity, deterministic_uid
from dicomnode.results.seg import concept
from dicomnode.results.sr import procedure_reported, report_sr


def algorithm(manifest: Manifest) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=manifest.name[:64], version=manifest.version,
                                         parameters=[f"intended use: {manifest.intended_use}"[:1024]])


def observation_context(manifest: Manifest) -> hd.sr.ObservationContext:
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=deterministic_uid("device", manifest.id, manifest.version),
            name=f"{manifest.id} {manifest.version}"[:64],
            manufacturer_name=MANUFACTURER,
            model_name=manifest.name[:64],
        )))


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
    images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources]
    groups = []
    for item in result.classes:
        spec = item.spec
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=identity.uid("tracking", str(spec.index)), identifier=f"{spec.label} (class {spec.index})"[:64]),
            finding_type=concept(spec.finding),
            algorithm_id=algorithm(manifest),
            source_images=images,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=concept(spec.finding), value=PRESENT if item.positive else ABSENT)],
            measurements=[hd.sr.Measurement(
                name=PROBABILITY, value=round(item.probability, 6), unit=NO_UNITS, algorithm_id=algorithm(manifest))],
        ))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(manifest),
        procedure_reported=procedure_reported(str(sources[0].get("Modality", ""))),
        imaging_measurements=groups,
    )
    return report_sr([*evidence, *sources], report, identity, f"AI {summary(result)} ({manifest.id})",
                     "classification SR")
