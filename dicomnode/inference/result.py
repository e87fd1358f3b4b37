"""What a model returns: plain dataclasses, the only part of inference/ that results/ reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dicomnode.inference.distribution import DistributionCheck
from dicomnode.inference.manifest import ClassSpec, FindingSpec
from dicomnode.inference.volume import Image, Volume

ModelInput = Volume | Image


@dataclass(frozen=True)
class Component:
    """One kept connected component of a segment, on the source grid ``(slices, rows, columns)``."""

    label: int  # the segment (label number) it belongs to
    voxels: int
    volume_mm3: float  # 0 for a 2D image (no slice thickness)
    max_probability: float  # the highest probability of its label inside it
    slices: tuple[int, ...]  # the slices of the label map it touches
    centroid: tuple[float, float, float]  # (slice, row, column), in voxels


@dataclass(frozen=True)
class SegmentFinding:
    """The manifest's ``[output.finding]``: its probability from the kept components of its label."""

    spec: FindingSpec
    probability: float
    outside: bool = False  # the input is outside the model's training distribution: never positive

    @property
    def positive(self) -> bool:
        """Present at the manifest's operating threshold (never on an input outside the training distribution)."""
        return not self.outside and self.probability >= self.spec.threshold


@dataclass(frozen=True)
class SegmentationResult:
    """A label map on the source grid ``(slices, rows, columns)`` with the manifest's label numbers.

    ``components`` are its connected components per label, largest first (those under the manifest's
    ``output.min_component_mm3`` are already gone from ``labels``); ``finding`` is set where the manifest
    declares ``[output.finding]``.
    """

    labels: np.ndarray
    components: tuple[Component, ...] = ()
    finding: SegmentFinding | None = None
    distribution: DistributionCheck | None = None  # set where the manifest has a [reference]


@dataclass(frozen=True)
class ClassProbability:
    spec: ClassSpec
    probability: float
    outside: bool = False  # the input is outside the model's training distribution: never positive

    @property
    def positive(self) -> bool:
        """Present at the manifest's operating threshold (never on an input outside the training distribution)."""
        return not self.outside and self.probability >= self.spec.threshold


@dataclass(frozen=True)
class ClassificationResult:
    """Per-class probabilities and, for the positive classes, occlusion maps in [0, 1] on the source grid."""

    classes: tuple[ClassProbability, ...]
    explanations: dict[int, np.ndarray] = field(default_factory=dict)  # class index -> (slices, rows, columns)
    distribution: DistributionCheck | None = None  # set where the manifest has a [reference]


InferenceResult = SegmentationResult | ClassificationResult
