"""ONNX Runtime backend: CUDA when present, else CPU, and the provider actually used is checked.

onnxruntime-gpu falls back to the CPU silently when CUDA cannot be loaded, so the node reads
``session.get_providers()`` after creating the session: with ``device = "cuda"`` a fallback is an
error; with ``auto`` it is logged and the model runs on the CPU.

The model takes one float32 input shaped ``(1, 1, slices, rows, columns)`` in the series' own voxel
order and returns ``(1, C, slices, rows, columns)``: label = argmax over C when C > 1, else
probability > 0.5.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from dicomnode.errors import ModelError
from dicomnode.inference.registry import Manifest
from dicomnode.log import extra

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """Providers to ask for: CUDA first when requested (or ``auto``) and built in, then the CPU."""
    if requested == "cuda" and CUDA not in available:
        raise ModelError("device 'cuda' was configured, but this onnxruntime has no CUDA provider")
    return [CUDA, CPU] if requested in ("cuda", "auto") and CUDA in available else [CPU]


class OnnxModel:
    def __init__(self, manifest: Manifest, device: str) -> None:
        self.manifest = manifest
        (file,) = manifest.files
        providers = choose_providers(device, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(manifest.resolve(file)), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"ONNX model {manifest.id} could not be loaded: {exc}") from exc
        active = self._session.get_providers()
        if CUDA in providers and CUDA not in active:
            if device == "cuda":
                raise ModelError(f"ONNX Runtime fell back to {active} although CUDA was configured")
            log.warning("ONNX Runtime could not use CUDA; running on the CPU", extra=extra(model=manifest.id))
        self.device = "cuda" if CUDA in active else "cpu"
        self._input = self._session.get_inputs()[0].name
        log.info("model loaded", extra=extra(model=manifest.id, device=self.device, providers=",".join(active)))

    def predict(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
        (output,) = self._session.run(None, {self._input: volume.astype(np.float32)[None, None]})
        scores: np.ndarray = np.asarray(output)[0]
        if scores.shape[1:] != volume.shape:
            raise ModelError(f"ONNX model returned shape {scores.shape} for a volume of {volume.shape}")
        labels: np.ndarray = np.argmax(scores, axis=0) if scores.shape[0] > 1 else scores[0] > 0.5
        return labels.astype(np.uint8)
