"""SEG + measured volume -> a Comprehensive 3D SR holding a TID 1500 Measurement Report."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.errors import BuildError
from dicomnode.inference.registry import Manifest
from dicomnode.results.equipment import MANUFACTURER, ResultIdentity, deterministic_uid

MILLILITER = Code("ml", "UCUM", "milliliter")
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


def segment_volumes_ml(labels: np.ndarray, voxel_volume_mm3: float, manifest: Manifest) -> dict[int, float]:
    """Volume of each segment: its voxel count times the voxel volume, in millilitres."""
    return {lab.number: float(np.count_nonzero(labels == lab.number)) * voxel_volume_mm3 / 1000.0
            for lab in manifest.labels}


def build_sr(
    seg: Dataset,
    sources: Sequence[Dataset],
    volumes_ml: dict[int, float],
    manifest: Manifest,
    identity: ResultIdentity,
) -> hd.sr.Comprehensive3DSR:
    """The measurement report: one volumetric ROI group per segment, each referencing the SEG."""
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=deterministic_uid("device", manifest.id, manifest.version),
                name=f"{manifest.id} {manifest.version}"[:64],
                manufacturer_name=MANUFACTURER,
            ),
        )
    )
    groups = []
    for label in manifest.labels:
        algorithm = hd.sr.AlgorithmIdentification(name=manifest.name[:64], version=manifest.version)
        finding = hd.sr.CodedConcept(label.type.value, label.type.scheme, label.type.meaning)
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
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
            finding_type=finding,
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(
                name=codes.SCT.Volume,
                value=round(volumes_ml[label.number], 3),
                unit=MILLILITER,
                algorithm_id=algorithm,
            )],
        ))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=procedure_reported(str(sources[0].get("Modality", "") or "")),
        imaging_measurements=groups,
    )
    return report_sr([seg, *sources], report, identity, f"AI {manifest.labels[0].label} report ({manifest.id})")


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
