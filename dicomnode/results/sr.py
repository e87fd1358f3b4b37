"""SEG + measured volume -> a Comprehensive 3D SR holding a TID 1500 Measurement Report.

Per segment, one volumetric ROI group (TID 1411) referencing the SEG, with the segment's volume. Where the
manifest declares ``[output.finding]``, the groups are TID 1501 instead (PixelMed's DicomSRValidator does
not accept TID 1411 and TID 1501 groups side by side): one for the finding, Present or Absent at its
threshold, with its probability, and one per kept connected component (a nodule, say) with its volume,
referencing the source images it lies on; the SEG stays in the SR's evidence. The algorithm identification
(TID 4019) of every group carries the manifest's intended use as a parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.errors import BuildError
from dicomnode.inference.manifest import CodeSpec
from dicomnode.inference.registry import Manifest
from dicomnode.inference.result import Component, SegmentFinding
from dicomnode.results.codes import ABSENT, NO_UNITS, PRESENT, PROBABILITY
from dicomnode.results.equipment import MANUFACTURER, ResultIdentity, deterministic_uid

MILLILITER = Code("ml", "UCUM", "milliliter")
CUBIC_MILLIMETER = Code("mm3", "UCUM", "cubic millimeter")
# TID 1500 row 4 "Procedure reported" takes its code from CID 100 (Quantitative Diagnostic Imaging
# Procedures): the modality's "unspecified body region" procedure, else SCT "Imaging procedure". Projection
# radiographs (CR, DX) get the generic code: LOINC 43468-8 "XR unspecified body region" is in today's CID 100
# but not in the copy PixelMed's validator checks against (2019), and a report must pass both validators.
PROCEDURES_BY_MODALITY: dict[str, Code] = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}
IMAGING_PROCEDURE: Code = codes.SCT.ImagingProcedure


def procedure_reported(modality: str) -> Code:
    """The CID 100 procedure code for a source series of ``modality``."""
    return PROCEDURES_BY_MODALITY.get(modality.strip().upper(), IMAGING_PROCEDURE)


def concept(spec: CodeSpec) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(spec.value, spec.scheme, spec.meaning)


def algorithm(manifest: Manifest) -> hd.sr.AlgorithmIdentification:
    """TID 4019, with the manifest's intended use (for the demonstration models: not for clinical use)."""
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


def finding_group(uid: str, identifier: str, finding: CodeSpec, present: bool, probability: float,
                  manifest: Manifest, images: Sequence[Dataset]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the finding, Present or Absent, and its probability, referencing the source images."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier[:64]),
        finding_type=concept(finding),
        algorithm_id=algorithm(manifest),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in images],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=concept(finding), value=PRESENT if present else ABSENT)],
        measurements=[hd.sr.Measurement(
            name=PROBABILITY, value=round(probability, 6), unit=NO_UNITS, algorithm_id=algorithm(manifest))],
    )


def component_groups(parts: Sequence[Component], sources: Sequence[Dataset], manifest: Manifest,
                     identity: ResultIdentity) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """TID 1501 per kept component: its volume (mm3) and highest probability, on the images it lies on."""
    labels = {lab.number: lab for lab in manifest.labels}
    groups = []
    for n, part in enumerate(parts, start=1):
        label = labels[part.label]
        # one source image per slice (single-frame series); a multi-frame image is referenced whole
        images = [sources[i] for i in part.slices] if len(sources) > max(part.slices) else list(sources[:1])
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=identity.uid("component", str(n)), identifier=f"{label.label} {n}"[:64]),
            finding_type=concept(label.type),
            algorithm_id=algorithm(manifest),
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in images],
            measurements=[
                hd.sr.Measurement(name=codes.SCT.Volume, value=round(part.volume_mm3, 3), unit=CUBIC_MILLIMETER,
                                  algorithm_id=algorithm(manifest)),
                hd.sr.Measurement(name=PROBABILITY, value=round(part.max_probability, 6), unit=NO_UNITS,
                                  algorithm_id=algorithm(manifest)),
            ],
        ))
    return groups


def segment_volumes_ml(labels: np.ndarray, voxel_volume_mm3: float, manifest: Manifest) -> dict[int, float]:
    """Volume of each segment: its voxel count times the voxel volume, in millilitres."""
    return {lab.number: float(np.count_nonzero(labels == lab.number)) * voxel_volume_mm3 / 1000.0
            for lab in manifest.labels}


def segment_groups(seg: Dataset, sources: Sequence[Dataset], volumes_ml: dict[int, float], manifest: Manifest,
                   identity: ResultIdentity) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """TID 1411 per segment: its volume (ml), referencing the segment in ``seg``."""
    return [hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=deterministic_uid(identity.seg_sop_uid, "tracking", str(label.number)),
            identifier=f"{label.label} segment {label.number}",
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=label.number,
            source_series=hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID),
        ),
        finding_type=concept(label.type),
        algorithm_id=algorithm(manifest),
        measurements=[hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=round(volumes_ml[label.number], 3),
            unit=MILLILITER,
            algorithm_id=algorithm(manifest),
        )],
    ) for label in manifest.labels]


def build_sr(
    seg: Dataset | None,
    sources: Sequence[Dataset],
    volumes_ml: dict[int, float],
    manifest: Manifest,
    identity: ResultIdentity,
    parts: Sequence[Component] = (),
    finding: SegmentFinding | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The measurement report: one volumetric ROI group per segment, each referencing the SEG.

    With ``finding`` (the manifest's ``[output.finding]``), the finding group and one group per kept
    component in ``parts`` instead (``Component.slices`` index ``sources``, which are in label-map order);
    ``seg`` is then ``None`` where nothing was segmented (no SEG), and the finding says Absent.
    """
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]
    if finding is None:
        groups = list(segment_groups(seg, sources, volumes_ml, manifest, identity)) if seg is not None else []
    else:
        spec = finding.spec
        groups = [finding_group(identity.uid("finding", str(spec.label)), spec.name, spec.code, finding.positive,
                                finding.probability, manifest, sources),
                  *component_groups(parts, sources, manifest, identity)]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(manifest),
        procedure_reported=procedure_reported(str(sources[0].get("Modality", "") or "")),
        imaging_measurements=groups,
    )
    evidence = [seg, *sources] if seg is not None else list(sources)
    return report_sr(evidence, report, identity, f"AI {manifest.labels[0].label} report ({manifest.id})")


def report_sr(evidence: Sequence[Dataset], report: hd.sr.MeasurementReport, identity: ResultIdentity,
              description: str, what: str = "SR") -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR that carries a TID 1500 ``report``, with the job's deterministic UIDs."""
    try:
        return hd.sr.Comprehensive3DSR(
            evidence=list(evidence),
            content=report,
            series_instance_uid=identity.sr_series_uid,
            series_number=identity.sr_series_number,
            sop_instance_uid=identity.sr_sop_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=description[:64],
        )
    except (ValueError, AttributeError, TypeError) as exc:
        raise BuildError(f"{what} could not be built: {exc}") from exc
