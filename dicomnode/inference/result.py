"""What a model returns: plain dataclasses, the only part of inference/ that results/ reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dicomnode.inference.manifest import ClassSpec
from dicomnode.inference.volume import Image, Volume

ModelInput = Volume | Image


@dataclass(frozen=True)
class SegmentationResult:
    """A label map on the source grid ``(slices, rows, columns)`` with the manifest's label numbers."""

    labels: np.ndarray


@dataclass(frozen=True)
class ClassProbability:
    spec: ClassSpec
    probability: float

    @property
    def positive(self) -> bool:
        """Present at the manifest's operating threshold."""
        return self.probability >= self.spec.threshold


@dataclass(frozen=True)
class ClassificationResult:
    """Per-class probabilities and, for the positive classes, occlusion maps in [0, 1] on the source grid."""

    classes: tuple[ClassProbability, ...]
    explanations: dict[int, np.ndarray] = field(default_factory=dict)  # class index -> (slices, rows, columns)


InferenceResult = SegmentationResult | ClassificationResult
