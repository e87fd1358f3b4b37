"""SEG + measured volume -> a Comprehensive 3D SR holding a TID 1500 Measurement Report that a viewer draws.

Every measurement group is a TID 1501 group (PixelMed's DicomSRValidator does not accept TID 1411 and TID
1501 groups side by side) that a radiologist sees on the images, as IHE AI Results (AIR) asks and as OHIF's
SR reader (``@ohif/extension-cornerstone-dicom-sr``, 3.13) accepts: an image region at the group's top level
(a 2D point on one source image, :class:`Anchor`), the first numeric measurement inferred from the same point,
and a Comment (DCM 121106) with the label a viewer shows, value and intended use included ("Brain: 1950.9 ml
(research use only, ...)"). A viewer that draws nothing still finds the same values as coded content.

- Per segment, one group with the segment's volume (ml), anchored at the centre of its fullest slice and
  referencing the SEG segment it measures (a source image item that names the segment number).
- Where the manifest declares ``[output.finding]``: one group for the finding, Present or Absent at its
  threshold, with its probability, anchored on the component that gave it (or the middle image when
  Absent); and one per kept connected component (a nodule, say) with its volume and highest probability,
  anchored at its centroid; the SEG stays in the SR's evidence.

The algorithm identification (TID 4019) of every group carries the manifest's intended use as a parameter.
Other content (a prior study's values, an input outside the training distribution) is added to a group
with :func:`add_comment` or to the report as further groups built with :func:`displayed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.errors import BuildError
from dicomnode.inference.distribution import OUTSIDE as OUTSIDE_DISTRIBUTION
from dicomnode.inference.manifest import CodeSpec
from dicomnode.inference.registry import Manifest
from dicomnode.inference.result import Component, SegmentFinding
from dicomnode.results.codes import ABSENT, COMMENT, NO_UNITS, PRESENT, PROBABILITY
from dicomnode.results.equipment import MANUFACTURER, ResultIdentity, deterministic_uid, equipment

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
DEMONSTRATION_CAVEAT = "research demonstration; not for clinical use"


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


def caveat(manifest: Manifest) -> str:
    """What every label ends with: a demonstration model's caveat, else the intended use's first sentence."""
    if manifest.demonstration:
        return DEMONSTRATION_CAVEAT
    first = manifest.intended_use.split(". ")[0].rstrip(".")
    return first[:1].lower() + first[1:80]


# ---------------------------------------------------------------------------------------------- anchors


@dataclass(frozen=True)
class Anchor:
    """Where a group is drawn: the point (column, row), in pixels from the top left corner of the top left
    pixel, on one source image (and frame, for a multi-frame image)."""

    image: Dataset
    frame: int | None
    column: float
    row: float

    def _source(self) -> hd.sr.SourceImageForRegion:
        frames = [self.frame] if self.frame is not None else None
        return hd.sr.SourceImageForRegion.from_source_image(self.image, referenced_frame_numbers=frames)

    @property
    def _point(self) -> np.ndarray:
        return np.array([[round(self.column, 2), round(self.row, 2)]], dtype=np.float64)

    def region(self) -> hd.sr.ImageRegion:
        """The group's Image Region (SCOORD POINT, CONTAINS)."""
        return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=self._point,
                                 source_image=self._source())

    def coordinates(self) -> hd.sr.CoordinatesForMeasurement:
        """The same point under a numeric measurement (INFERRED FROM)."""
        return hd.sr.CoordinatesForMeasurement(graphic_type=hd.sr.GraphicTypeValues.POINT,
                                               graphic_data=self._point, source_image=self._source())


def anchor_at(sources: Sequence[Dataset], index: int, row: float, column: float) -> Anchor:
    """The anchor at voxel ``(index, row, column)`` of a map in source order: ``index`` is the source image of
    a single-frame series, or the frame (0-based) of a single multi-frame image."""
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1) or 1) > 1:
        return Anchor(sources[0], index + 1, column + 0.5, row + 0.5)
    return Anchor(sources[min(max(index, 0), len(sources) - 1)], None, column + 0.5, row + 0.5)


def middle_anchor(sources: Sequence[Dataset]) -> Anchor:
    """The centre of the middle image (or frame): where a result with no location is drawn."""
    frames = int(sources[0].get("NumberOfFrames", 1) or 1) if len(sources) == 1 else len(sources)
    return anchor_at(sources, frames // 2, (int(sources[0].Rows) - 1) / 2, (int(sources[0].Columns) - 1) / 2)


def strongest_anchor(sources: Sequence[Dataset], heat: np.ndarray) -> Anchor:
    """The voxel where ``heat`` (``(index, row, column)`` or ``(row, column)``, source order) is highest."""
    volume = heat if heat.ndim == 3 else heat[None]
    index, row, column = np.unravel_index(int(np.argmax(volume)), volume.shape)
    return anchor_at(sources, int(index), float(row), float(column))


def component_anchor(sources: Sequence[Dataset], part: Component, frame_order: Sequence[int] = ()) -> Anchor:
    """The component's centroid, on the slice it touches nearest to it; ``frame_order``: the source frame
    of each label-map slice, for a multi-frame image (``Volume.frame_order``)."""
    nearest = min(part.slices, key=lambda s: abs(s - part.centroid[0]))
    index = frame_order[nearest] if frame_order else nearest
    return anchor_at(sources, index, part.centroid[1], part.centroid[2])


def seg_anchors(seg: Dataset, sources: Sequence[Dataset]) -> dict[int, Anchor]:
    """Per segment of a BINARY ``seg`` built on ``sources``: the centre of the segment on its fullest frame."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    shared = seg.SharedFunctionalGroupsSequence[0]
    best: dict[int, tuple[int, int]] = {}  # segment -> (count, frame index)
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = item if "SegmentIdentificationSequence" in item else shared  # one segment: shared
        number = int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        count = int(np.count_nonzero(pixels[i]))
        if count > best.get(number, (0, -1))[0]:
            best[number] = (count, i)
    anchors = {}
    for number, (_, i) in best.items():
        source = seg.PerFrameFunctionalGroupsSequence[i].DerivationImageSequence[0].SourceImageSequence[0]
        image = by_uid.get(str(source.ReferencedSOPInstanceUID))
        if image is None:
            continue
        frame = int(source.ReferencedFrameNumber) if "ReferencedFrameNumber" in source else None
        rows, columns = np.nonzero(pixels[i])
        anchors[number] = Anchor(image, frame, float(columns.mean()) + 0.5, float(rows.mean()) + 0.5)
    return anchors


# ---------------------------------------------------------------------------------------------- groups


def comment(text: str) -> hd.sr.TextContentItem:
    """A Comment (DCM 121106): the text OHIF shows as an annotation's label."""
    return hd.sr.TextContentItem(name=COMMENT, value=text[:1024],
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def add_comment(group: hd.sr.MeasurementsAndQualitativeEvaluations, text: str) -> None:
    """Append a further Comment to ``group`` (the first one is the label a viewer shows)."""
    group[0].ContentSequence.append(comment(text))


def displayed(group: hd.sr.MeasurementsAndQualitativeEvaluations, anchor: Anchor,
              label: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """``group`` with its image region (the anchor) and its label (a Comment), as a viewer draws it; the first
    numeric measurement must already be inferred from ``anchor.coordinates()``."""
    group[0].ContentSequence.append(anchor.region())
    group[0].ContentSequence.append(comment(label))
    return group


def _measurement(name: Code | hd.sr.CodedConcept, value: float, unit: Code, manifest: Manifest,
                 anchor: Anchor | None = None) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=value, unit=unit, algorithm_id=algorithm(manifest),
                             referenced_coordinates=[anchor.coordinates()] if anchor is not None else None)


def finding_label(meaning: str, present: bool, probability: float, manifest: Manifest) -> str:
    """``Opacity present, p = 0.88 (research demonstration; not for clinical use)``."""
    return f"{meaning} {'present' if present else 'absent'}, p = {probability:.2f} ({caveat(manifest)})"


def finding_group(uid: str, identifier: str, finding: CodeSpec, present: bool, probability: float,
                  manifest: Manifest, images: Sequence[Dataset],
                  anchor: Anchor | None = None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the finding, Present or Absent, and its probability, referencing the source images; drawn at
    ``anchor`` (the point of strongest evidence; default: the middle image's centre)."""
    where = anchor if anchor is not None else middle_anchor(images)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier[:64]),
        finding_type=concept(finding),
        algorithm_id=algorithm(manifest),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in images],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=concept(finding), value=PRESENT if present else ABSENT)],
        measurements=[_measurement(PROBABILITY, round(probability, 6), NO_UNITS, manifest, where)],
    )
    return displayed(group, where, finding_label(finding.meaning, present, probability, manifest))


def component_groups(parts: Sequence[Component], sources: Sequence[Dataset], manifest: Manifest,
                     identity: ResultIdentity, frame_order: Sequence[int] = ()
                     ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """TID 1501 per kept component: its volume (mm3) and highest probability, on the images it lies on."""
    labels = {lab.number: lab for lab in manifest.labels}
    groups = []
    for n, part in enumerate(parts, start=1):
        label = labels[part.label]
        # one source image per slice (single-frame series); a multi-frame image is referenced whole
        images = [sources[i] for i in part.slices] if len(sources) > max(part.slices) else list(sources[:1])
        anchor = component_anchor(sources, part, frame_order)
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=identity.uid("component", str(n)), identifier=f"{label.label} {n}"[:64]),
            finding_type=concept(label.type),
            algorithm_id=algorithm(manifest),
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in images],
            measurements=[
                _measurement(codes.SCT.Volume, round(part.volume_mm3, 3), CUBIC_MILLIMETER, manifest, anchor),
                _measurement(PROBABILITY, round(part.max_probability, 6), NO_UNITS, manifest),
            ],
        )
        size = f"{part.volume_mm3:.0f} mm3, " if part.volume_mm3 > 0 else ""
        groups.append(displayed(group, anchor, f"{label.label} {n}: {size}p = {part.max_probability:.2f} "
                                               f"({caveat(manifest)})"))
    return groups


def segment_volumes_ml(labels: np.ndarray, voxel_volume_mm3: float, manifest: Manifest) -> dict[int, float]:
    """Volume of each segment: its voxel count times the voxel volume, in millilitres."""
    return {lab.number: float(np.count_nonzero(labels == lab.number)) * voxel_volume_mm3 / 1000.0
            for lab in manifest.labels}


def _segment_reference(seg: Dataset, number: int) -> hd.sr.SourceImageForMeasurementGroup:
    """The SEG segment a group measures (Source of Measurement, with its Referenced Segment Number)."""
    item = hd.sr.SourceImageForMeasurementGroup(seg.SOPClassUID, seg.SOPInstanceUID)
    item.ReferencedSOPSequence[0].ReferencedSegmentNumber = number
    return item


def segment_groups(seg: Dataset, sources: Sequence[Dataset], volumes_ml: dict[int, float], manifest: Manifest,
                   identity: ResultIdentity) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """TID 1501 per segment: its volume (ml), referencing the segment in ``seg``, drawn at its centre on its
    fullest slice: ``Brain: 1950.9 ml (research use only, not for diagnostic use)``."""
    anchors = seg_anchors(seg, sources)
    groups = []
    for label in manifest.labels:
        anchor = anchors.get(label.number, middle_anchor(sources))
        volume = volumes_ml[label.number]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=deterministic_uid(identity.seg_sop_uid, "tracking", str(label.number)),
                identifier=f"{label.label} segment {label.number}"[:64],
            ),
            finding_type=concept(label.type),
            algorithm_id=algorithm(manifest),
            source_images=[_segment_reference(seg, label.number)],
            measurements=[_measurement(codes.SCT.Volume, round(volume, 3), MILLILITER, manifest, anchor)],
        )
        groups.append(displayed(group, anchor, f"{label.label}: {volume:.1f} ml ({caveat(manifest)})"))
    return groups


def build_sr(
    seg: Dataset | None,
    sources: Sequence[Dataset],
    volumes_ml: dict[int, float],
    manifest: Manifest,
    identity: ResultIdentity,
    parts: Sequence[Component] = (),
    finding: SegmentFinding | None = None,
    frame_order: Sequence[int] = (),
    amend: Callable[[list[hd.sr.MeasurementsAndQualitativeEvaluations]], Sequence[Dataset]] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The measurement report: one group per segment, each referencing its segment in the SEG.

    With ``finding`` (the manifest's ``[output.finding]``), the finding group and one group per kept
    component in ``parts`` instead (``Component.slices`` index ``sources``, which are in label-map order;
    ``frame_order`` maps them to the frames of a multi-frame source); ``seg`` is then ``None`` where nothing
    was segmented (no SEG), and the finding says Absent.
    """
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations]
    if finding is None:
        groups = segment_groups(seg, sources, volumes_ml, manifest, identity) if seg is not None else []
    else:
        spec = finding.spec
        strongest = max((p for p in parts if p.label == spec.label), key=lambda p: p.max_probability, default=None)
        anchor = component_anchor(sources, strongest, frame_order) if strongest is not None else None
        groups = [finding_group(identity.uid("finding", str(spec.label)), spec.name, spec.code, finding.positive,
                                finding.probability, manifest, sources, anchor),
                  *component_groups(parts, sources, manifest, identity, frame_order)]
        if finding.outside:  # the engine's distribution check (dicomnode/inference/distribution.py)
            add_comment(groups[0], OUTSIDE_DISTRIBUTION)
    # -- longitudinal results (dicomnode/results/longitudinal.py): ``amend`` adds the groups comparing with a
    # prior study (or a Comment on each group saying why there is none) and returns the further evidence
    further = list(amend(groups)) if amend is not None else []
    # -- end of longitudinal results
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(manifest),
        procedure_reported=procedure_reported(str(sources[0].get("Modality", "") or "")),
        imaging_measurements=groups,
    )
    evidence = [seg, *sources] if seg is not None else list(sources)
    evidence += further
    return report_sr(evidence, report, identity, manifest, f"AI {manifest.labels[0].label} report ({manifest.id})")


def report_sr(evidence: Sequence[Dataset], report: hd.sr.MeasurementReport, identity: ResultIdentity,
              manifest: Manifest, description: str, what: str = "SR") -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR that carries a TID 1500 ``report``, with the job's deterministic UIDs."""
    try:
        return hd.sr.Comprehensive3DSR(
            evidence=list(evidence),
            content=report,
            series_instance_uid=identity.sr_series_uid,
            series_number=identity.sr_series_number,
            sop_instance_uid=identity.sr_sop_uid,
            instance_number=1,
            is_complete=True,
            series_description=description[:64],
            **equipment(manifest),
        )
    except (ValueError, AttributeError, TypeError) as exc:
        raise BuildError(f"{what} could not be built: {exc}") from exc
