"""Longitudinal results: each segment's volume now and at a prior study, in the current study's TID 1500 SR.

Per segment, two TID 1501 measurement groups join the report's own (one per segment, :mod:`.sr`):

- **at the prior**: TID 1502 Time Point Context (row 1, Time Point: UMLS C2348792, as highdicom codes it,
  ``prior YYYY-MM-DD``), the segment's Volume (SCT 118565006, ml) measured by the same model on the prior
  series, drawn on (and its source image) the middle slice of the prior series, so that the SR's Pertinent
  Other Evidence names the prior study;
- **change since the prior**: Time Point Context (``current YYYY-MM-DD``), drawn on the current series'
  middle slice: the Volume now, the
  change in ml, the per cent change (DCM 125314 Fractional Change, UCUM ``%``) and the annualised rate
  (UCUM ``%/a``), and a Comment a viewer shows: ``Brain: 1450.0 ml, -50.0 ml (-3.33 %, -3.31 %/year) since
  2025-01-01``.

Every group is drawn (an Image Region and a Comment, as :func:`dicomnode.results.sr.displayed` makes the
report's own groups, which is also what PixelMed's validator needs to read them as TID 1501). Time Point
Order (TID 1502 row 4) is left out: PixelMed's validator takes the NUM for a measurement of TID 1419.

The change in ml and the annualised rate have no code in the standard's measurement context groups; they
carry this node's private codes (scheme ``99DICOMNODE``, :data:`VOLUME_CHANGE`, :data:`ANNUALISED_CHANGE`),
beside the standard Volume and Fractional Change, so that a reader that knows neither still reads both
volumes and the per cent change.

Where there is no comparison (no prior found, fetched or readable), each segment's group gets a Comment
that says so and why: a result without comparison, never a failure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.inference.registry import Manifest
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.sr import Anchor, add_comment, displayed, middle_anchor

VOLUME = codes.SCT.Volume  # 118565006
FRACTIONAL_CHANGE = Code("125314", "DCM", "Fractional Change")
VOLUME_CHANGE = Code("VOLCHG", "99DICOMNODE", "Volume change since prior")
ANNUALISED_CHANGE = Code("VOLCHGRATE", "99DICOMNODE", "Annualised volume change since prior")
MILLILITER = Code("ml", "UCUM", "milliliter")
PERCENT = Code("%", "UCUM", "percent")
PERCENT_PER_YEAR = Code("%/a", "UCUM", "percent per year")
DAYS_PER_YEAR = 365.25

Groups = list[hd.sr.MeasurementsAndQualitativeEvaluations]


@dataclass(frozen=True)
class PriorVolumes:
    """One prior study, its series as the model saw it, and each segment's volume there."""

    study_uid: str
    series_uid: str
    study_date: dt.date
    image: Dataset  # a source image of the prior (its middle slice): referenced by the groups
    volumes_ml: dict[int, float]


@dataclass(frozen=True)
class Change:
    """A segment's change from ``prior_ml`` to ``now_ml`` over ``days``."""

    now_ml: float
    prior_ml: float
    days: int

    @property
    def ml(self) -> float:
        return self.now_ml - self.prior_ml

    @property
    def per_cent(self) -> float:
        return 100.0 * self.ml / self.prior_ml if self.prior_ml > 0 else 0.0

    @property
    def per_cent_per_year(self) -> float:
        return self.per_cent * DAYS_PER_YEAR / self.days if self.days > 0 else 0.0


@dataclass(frozen=True)
class Comparison:
    """What the SR says about priors: the prior's volumes, or why there is no comparison."""

    current_date: dt.date | None
    prior: PriorVolumes | None = None
    reason: str = ""

    def change(self, number: int, now_ml: float) -> Change | None:
        if self.prior is None or self.current_date is None:
            return None
        return Change(now_ml, self.prior.volumes_ml.get(number, 0.0), (self.current_date - self.prior.study_date).days)


def study_date(ds: Dataset) -> dt.date | None:
    try:
        return dt.datetime.strptime(str(ds.get("StudyDate", "") or "")[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _algorithm(manifest: Manifest) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=manifest.name[:64], version=manifest.version,
                                         parameters=[f"intended use: {manifest.intended_use}"[:1024]])


def _measurement(name: Code, value: float, unit: Code, manifest: Manifest, anchor: Anchor | None = None
                 ) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(value, 4), unit=unit, algorithm_id=_algorithm(manifest),
                             referenced_coordinates=[anchor.coordinates()] if anchor is not None else None)


def label_text(label: str, change: Change, prior_date: dt.date) -> str:
    return (f"{label}: {change.now_ml:.1f} ml, {change.ml:+.1f} ml ({change.per_cent:+.2f} %, "
            f"{change.per_cent_per_year:+.2f} %/year) since {prior_date:%Y-%m-%d} ({change.prior_ml:.1f} ml)")


def _group(uid: str, identifier: str, time_point: str, kind: hd.sr.CodedConcept, manifest: Manifest,
           image: Dataset, measurements: list[hd.sr.Measurement]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group at ``time_point`` measured on ``image`` (the prior's or the current study's)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier[:64]),
        time_point_context=hd.sr.TimePointContext(time_point=time_point),
        finding_type=kind, algorithm_id=_algorithm(manifest),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image)],
        measurements=measurements)


def groups(comparison: Comparison, volumes_ml: dict[int, float], current: Sequence[Dataset], manifest: Manifest,
           identity: ResultIdentity) -> Groups:
    """The two groups per segment (module docstring); none without a prior."""
    prior = comparison.prior
    if prior is None or comparison.current_date is None:
        return []
    out: Groups = []
    here, there = middle_anchor(current), middle_anchor([prior.image])
    for label in manifest.labels:
        change = comparison.change(label.number, volumes_ml[label.number])
        assert change is not None
        kind = hd.sr.CodedConcept(label.type.value, label.type.scheme, label.type.meaning)
        at_prior = _group(identity.uid("prior", prior.series_uid, str(label.number)),
                          f"{label.label} at prior {prior.study_date:%Y-%m-%d}", f"prior {prior.study_date:%Y-%m-%d}",
                          kind, manifest, prior.image,
                          [_measurement(VOLUME, change.prior_ml, MILLILITER, manifest, there)])
        out.append(displayed(at_prior, there, f"{label.label} at the prior study ({prior.study_date:%Y-%m-%d}): "
                                              f"{change.prior_ml:.1f} ml"))
        since = _group(identity.uid("change", prior.series_uid, str(label.number)),
                       f"{label.label} change since {prior.study_date:%Y-%m-%d}",
                       f"current {comparison.current_date:%Y-%m-%d}", kind, manifest, here.image,
                       [_measurement(VOLUME, change.now_ml, MILLILITER, manifest, here),
                        _measurement(VOLUME_CHANGE, change.ml, MILLILITER, manifest),
                        _measurement(FRACTIONAL_CHANGE, change.per_cent, PERCENT, manifest),
                        _measurement(ANNUALISED_CHANGE, change.per_cent_per_year, PERCENT_PER_YEAR, manifest)])
        out.append(displayed(since, here, label_text(label.label, change, prior.study_date)))
    return out


def amend(comparison: Comparison, volumes_ml: dict[int, float], current: Sequence[Dataset], manifest: Manifest,
          identity: ResultIdentity, report: Groups) -> list[Dataset]:
    """Add the comparison to ``report`` (the SR's groups, in place): its groups, or, without a prior, a
    Comment on each group saying why; returns the further evidence (the prior's referenced image)."""
    added = groups(comparison, volumes_ml, current, manifest, identity)
    if not added:
        for group in report:
            add_comment(group, f"No comparison with a prior study: {comparison.reason}")
        return []
    report.extend(added)
    assert comparison.prior is not None
    return [comparison.prior.image]
