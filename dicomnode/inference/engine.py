"""The generic engine: any ONNX segmenter or classifier, driven by its manifest, in numpy and scipy.

The flow for one series, top to bottom: source -> model grid (orientation, resampling, or 2D fit) ->
intensities -> channels -> the network (whole, or a sliding window) -> activation -> back onto the
source grid -> label map, or class probabilities with occlusion maps for the positive classes. Where the
manifest has a ``[reference]``, the prepared input's distance to it is checked first
(:mod:`dicomnode.inference.distribution`): an input outside the training distribution gets no positive
finding (and a segmenter's labels stay empty). Imports neither torch nor MONAI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from dicomnode.errors import ModelError, SeriesNotUsable
from dicomnode.inference import distribution
from dicomnode.inference.distribution import DistributionCheck
from dicomnode.inference.explain import occlusion_maps
from dicomnode.inference.geometry import fit_2d, model_grid
from dicomnode.inference.intensity import adjust, channels, display_values
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.onnx import OnnxSession
from dicomnode.inference.postprocess import (
    activate,
    check_channels,
    class_probabilities,
    components,
    label_map,
    segment_finding,
)
from dicomnode.inference.result import ClassificationResult, InferenceResult, ModelInput, SegmentationResult
from dicomnode.inference.tiling import sliding_window
from dicomnode.inference.volume import Image, Volume

ToSource = Callable[[np.ndarray], np.ndarray]  # (C, *model grid) -> (C, slices, rows, columns)


class GenericModel:
    """A warm ONNX session plus the manifest's pre- and post-processing."""

    def __init__(self, manifest: Manifest, device: str, threads: int = 0) -> None:
        self.manifest = manifest
        self._network = OnnxSession(manifest, device, threads)
        self.device = self._network.device

    def run(self, image: ModelInput) -> InferenceResult:
        x, to_source = self.prepare(image)
        reference = self.manifest.reference
        checked = distribution.check(reference, x) if reference is not None else None
        outside = checked is not None and checked.outside
        if self.manifest.task == "classification":
            return self._classify(x, to_source, checked)
        probabilities = to_source(activate(self._dense(x), self.manifest.output.activation))
        voxel_mm3 = image.voxel_volume_mm3 if isinstance(image, Volume) else 0.0
        labels, parts = components(label_map(probabilities, self.manifest), probabilities, self.manifest, voxel_mm3)
        if outside:  # outside the training distribution: nothing segmented, the finding never positive
            labels, parts = np.zeros_like(labels), ()
        spec = self.manifest.output.finding
        finding = segment_finding(parts, spec) if spec is not None else None
        return SegmentationResult(labels=labels, components=parts, distribution=checked,
                                  finding=replace(finding, outside=outside) if finding is not None else None)

    def prepare(self, image: ModelInput) -> tuple[np.ndarray, ToSource]:
        """The network's input ``(C, *model grid)`` and the way back to the source grid."""
        spec = self.manifest.input
        if spec.dimensions == 3:
            if not isinstance(image, Volume):
                raise SeriesNotUsable(f"model {self.manifest.id} takes a volume; this series is one 2D image")
            grid = model_grid(image.array.shape, image.affine, spec)
            array = adjust(grid.to_model(image.array), spec.intensity)
            return channels(array, spec.intensity.channels), grid.to_source
        if not isinstance(image, Image):
            raise SeriesNotUsable(f"model {self.manifest.id} takes a single 2D image; this series is a volume")
        values = adjust(display_values(image.array, image.dataset, spec.intensity), spec.intensity)
        fit = fit_2d((values.shape[0], values.shape[1]), spec)
        return channels(fit.to_model(values), spec.intensity.channels), lambda c: fit.to_source(c)[:, None]

    def _dense(self, x: np.ndarray) -> np.ndarray:
        tiling = self.manifest.input.tiling
        return sliding_window(x, tiling, self._window) if tiling is not None else self._window(x)

    def _window(self, x: np.ndarray) -> np.ndarray:
        out = self._network(x)
        if out.ndim != x.ndim or out.shape[1:] != x.shape[1:]:
            raise ModelError(f"model {self.manifest.id}: output shape {out.shape} does not fit the input "
                             f"{x.shape} (a segmenter returns (classes, *input grid))")
        check_channels(self.manifest, out.shape[0])
        return out

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """The class probabilities ``(K,)`` for one prepared input."""
        out = self._network(x)
        if out.ndim != 1:
            raise ModelError(f"model {self.manifest.id}: output shape {out.shape} is not a class vector "
                             "(a classifier returns (1, classes))")
        check_channels(self.manifest, out.shape[0])
        return activate(out, self.manifest.output.activation)

    def _classify(self, x: np.ndarray, to_source: ToSource, checked: DistributionCheck | None) -> ClassificationResult:
        classes = class_probabilities(self.probabilities(x), self.manifest)
        if checked is not None and checked.outside:  # no positive finding on an input the model was not trained for
            classes = tuple(replace(c, outside=True) for c in classes)
        spec = self.manifest.output.explanation
        if spec is None:
            return ClassificationResult(classes=classes, distribution=checked)
        positive = [c.spec.index for c in classes if c.positive]
        maps = occlusion_maps(x, positive, spec, self.probabilities)
        return ClassificationResult(classes=classes, distribution=checked, explanations={
            k: np.clip(to_source(m[None])[0], 0.0, 1.0) for k, m in maps.items()})
