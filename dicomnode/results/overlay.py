"""An explanation map as a secondary-capture colour overlay, for viewers that do not display SEG.

The source image (its display values, MONOCHROME1 inverted) in grey, with the map blended in a
blue-to-red ramp where it is above 0.1; one RGB Secondary Capture image per positive class.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicomnode.errors import BuildError
from dicomnode.inference.intensity import display_values
from dicomnode.inference.manifest import ClassSpec, Intensity, Manifest
from dicomnode.results.equipment import ResultIdentity, equipment
from dicomnode.results.seg import EXPLANATION_SERIES_OFFSET

VISIBLE = 0.1


def blend(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``grey`` (any range) and ``heat`` in [0, 1] -> RGB uint8 ``(rows, columns, 3)``."""
    low, high = float(grey.min()), float(grey.max())
    base = (grey - low) / (high - low) if high > low else np.zeros_like(grey)
    colour = np.stack([heat, 1 - np.abs(2 * heat - 1), 1 - heat], axis=-1)
    alpha = np.where(heat > VISIBLE, 0.5, 0.0)[..., None]
    rgb = (1 - alpha) * base[..., None] + alpha * colour
    return np.asarray(np.clip(np.round(rgb * 255), 0, 255), dtype=np.uint8)


def build_overlays(source: Dataset, values: np.ndarray, maps: dict[ClassSpec, np.ndarray], manifest: Manifest,
                   identity: ResultIdentity) -> list[hd.sc.SCImage]:
    """One SC image per class map; ``values`` are the source's Modality-LUT values ``(rows, columns)``."""
    grey = display_values(values, source, Intensity(voi_lut=True))
    images: list[hd.sc.SCImage] = []
    for number, (spec, heat) in enumerate(maps.items(), start=1):
        orientation = source.get("PatientOrientation") or ["L", "F"]
        try:
            images.append(hd.sc.SCImage.from_ref_dataset(
                ref_dataset=source,
                pixel_array=blend(grey, heat[0] if heat.ndim == 3 else heat),
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                series_instance_uid=identity.uid("overlay-series"),
                series_number=identity.series_number(EXPLANATION_SERIES_OFFSET),
                sop_instance_uid=identity.uid("overlay-instance", str(spec.index)),
                instance_number=number,
                patient_orientation=(str(orientation[0]), str(orientation[1])),
                series_description=f"AI evidence overlay ({manifest.id})"[:64],
                **equipment(manifest),
            ))
        except (ValueError, AttributeError, TypeError) as exc:
            raise BuildError(f"overlay could not be built: {exc}") from exc
        if "Laterality" not in images[-1]:  # Type 2C in General Series when no ImageLaterality is given
            images[-1].Laterality = ""
        images[-1].ImageComments = f"Intended use: {manifest.intended_use}"  # General Image, LT (Type 3)
    return images
