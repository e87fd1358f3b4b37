"""TorchScript backend: one network from a ``.pt`` file of a manifest, numpy in and out (imports torch)."""

from __future__ import annotations

import numpy as np
import torch

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import Manifest


def select_device(requested: str) -> str:
    """``cuda`` when asked for or when ``auto`` and torch sees a GPU, else ``cpu``."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was configured, but torch sees no CUDA device")
    if requested in ("cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


class TorchScriptNetwork:
    """``(C, *spatial)`` in, the network's output without its batch axis out, like :class:`OnnxSession`."""

    def __init__(self, manifest: Manifest, name: str, device: str) -> None:
        self.device = select_device(device)
        path = manifest.resolve(manifest.file(name))
        try:
            self._net = torch.jit.load(str(path), map_location=self.device).eval()
        except RuntimeError as exc:
            raise ModelError(f"model {manifest.id}: {name} could not be loaded: {exc}") from exc

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self._net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)[None]).to(self.device))
        result: np.ndarray = out[0].cpu().numpy()
        return result
