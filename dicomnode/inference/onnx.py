"""ONNX Runtime backend: one warm session per model; CUDA when it really loaded, else the CPU.

onnxruntime-gpu falls back to the CPU silently when CUDA cannot be loaded, so the node reads
``session.get_providers()`` after creating the session: with ``device = "cuda"`` a fallback is an
error; with ``auto`` it is logged and the model runs on the CPU. Every output is checked: a batch of
one, and finite values.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import Manifest, ModelFile
from dicomnode.log import extra

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """Providers to ask for: CUDA first when requested (or ``auto``) and built in, then the CPU."""
    if requested == "cuda" and CUDA not in available:
        raise ModelError("device 'cuda' was configured, but this onnxruntime has no CUDA provider")
    return [CUDA, CPU] if requested in ("cuda", "auto") and CUDA in available else [CPU]


class OnnxSession:
    """``(C, *spatial)`` in, the first output without its batch axis out."""

    def __init__(self, manifest: Manifest, device: str, threads: int = 0, file: ModelFile | None = None) -> None:
        self.manifest = manifest
        onnx_files = [file] if file is not None else [f for f in manifest.files if f.name.endswith(".onnx")]
        if len(onnx_files) != 1:
            raise ModelError(f"model {manifest.id}: the onnx backend needs exactly one .onnx file")
        path = manifest.resolve(onnx_files[0])
        providers = choose_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"model {manifest.id}: the ONNX file could not be loaded: {exc}") from exc
        active = self._session.get_providers()
        if CUDA in providers and CUDA not in active:
            if device == "cuda":
                raise ModelError(f"model {manifest.id}: ONNX Runtime fell back to {active} "
                                 "although CUDA was configured")
            log.warning("ONNX Runtime could not use CUDA; running on the CPU",
                        extra=extra(stage="infer", model=manifest.id))
        self.device = "cuda" if CUDA in active else "cpu"
        self._input = self._session.get_inputs()[0].name
        log.info("model loaded", extra=extra(stage="infer", model=manifest.id, device=self.device,
                                             providers=",".join(active)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        try:
            outputs = self._session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)[None]})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"model {self.manifest.id}: inference failed: {type(exc).__name__}: {exc}") from exc
        out = np.asarray(outputs[0])
        if out.ndim < 2 or out.shape[0] != 1:
            raise ModelError(f"model {self.manifest.id}: output shape {out.shape} has no batch axis of 1")
        if not np.all(np.isfinite(out)):
            raise ModelError(f"model {self.manifest.id}: output contains NaN or infinite values")
        result: np.ndarray = out[0]
        return result
