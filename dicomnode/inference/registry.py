"""Model manifests (``models/<id>/manifest.toml``) and the warm-model cache.

A manifest names the model's id and version, its backend, its files with SHA-256 digests, its labels
with SNOMED CT codes, its intended use and the routing rule that applies by default. Files are found
either beside the manifest or, with ``source = "dist:<distribution>:<path>"``, inside an installed
Python distribution (how deepbet ships its weights).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dicomnode.errors import ModelError
from dicomnode.settings import Rule


@dataclass(frozen=True)
class CodeSpec:
    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class LabelSpec:
    number: int
    label: str
    category: CodeSpec
    type: CodeSpec


@dataclass(frozen=True)
class ModelFile:
    name: str
    source: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    id: str
    version: str
    name: str
    backend: str
    intended_use: str
    min_slices: int
    series_number_base: int
    files: tuple[ModelFile, ...]
    labels: tuple[LabelSpec, ...]
    default_rule: Rule
    directory: Path

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Parse and validate one manifest; raises :class:`ModelError` naming the bad key."""
        try:
            raw = tomllib.loads(path.read_text())
            rule = raw.get("default_rule", {})
            return cls(
                id=str(raw["id"]), version=str(raw["version"]), name=str(raw["name"]),
                backend=str(raw["backend"]), intended_use=" ".join(str(raw["intended_use"]).split()),
                min_slices=int(raw.get("min_slices", 1)),
                series_number_base=int(raw.get("series_number_base", 9000)),
                files=tuple(ModelFile(str(f["name"]), str(f["source"]), str(f["sha256"]).lower())
                            for f in raw["files"]),
                labels=tuple(LabelSpec(int(lab["number"]), str(lab["label"]), CodeSpec(**lab["category"]),
                                       CodeSpec(**lab["type"])) for lab in raw["labels"]),
                default_rule=Rule(name=rule.get("name", raw["id"]), model=str(raw["id"]),
                                  match=rule.get("match", {})),
                directory=path.parent,
            )
        except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as exc:
            raise ModelError(f"manifest {path} is invalid: {type(exc).__name__}: {exc}") from exc

    def resolve(self, file: ModelFile) -> Path:
        """The path of ``file``, checked against its SHA-256 digest."""
        if file.source.startswith("dist:"):
            _, dist, rel = file.source.split(":", 2)
            try:
                path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
            except importlib.metadata.PackageNotFoundError as exc:
                raise ModelError(f"model {self.id}: distribution {dist!r} is not installed") from exc
        else:
            path = self.directory / file.source
        if not path.is_file():
            raise ModelError(f"model {self.id}: file {file.name} not found at {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != file.sha256:
            raise ModelError(f"model {self.id}: file {file.name} has SHA-256 {digest}, expected {file.sha256}")
        return path


class Model(Protocol):
    """A loaded model: one call per volume, returning a label map of the input's shape."""

    manifest: Manifest
    device: str

    def predict(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray: ...


def load_manifests(models_dir: Path) -> dict[str, Manifest]:
    manifests = {}
    for path in sorted(models_dir.glob("*/manifest.toml")):
        manifest = Manifest.read(path)
        manifests[manifest.id] = manifest
    return manifests


class Registry:
    """The manifests under ``models_dir`` and the models loaded so far (kept warm)."""

    def __init__(self, models_dir: Path, device: str = "auto") -> None:
        self.manifests = load_manifests(models_dir)
        self._device = device
        self._loaded: dict[str, Model] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str) -> Model:
        """The warm model ``model_id``, loading it on first use."""
        with self._lock:
            if model_id not in self._loaded:
                manifest = self.manifests.get(model_id)
                if manifest is None:
                    raise ModelError(f"no model {model_id!r} under the models directory")
                self._loaded[model_id] = _load(manifest, self._device)
            return self._loaded[model_id]


def _load(manifest: Manifest, device: str) -> Model:
    if manifest.backend == "deepbet":
        from dicomnode.inference.deepbet import DeepbetModel  # torch is imported only here

        return DeepbetModel(manifest, device)
    if manifest.backend == "onnx":
        from dicomnode.inference.onnx import OnnxModel  # onnxruntime is imported only here

        return OnnxModel(manifest, device)
    raise ModelError(f"model {manifest.id}: unknown backend {manifest.backend!r}")


def select_device(requested: str) -> str:
    """``cuda`` when asked for or when ``auto`` and torch sees a GPU, else ``cpu``."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was configured, but torch sees no CUDA device")
    if requested in ("cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    return "cpu"

