"""Manifests -> warm models. Picks a backend from a table of loaders; imports no backend at top level.

A bad manifest or a model that fails to load is recorded with its reason (:attr:`Registry.errors`), and
the other models still load. Each model has a concurrency limit: at most ``inference_concurrency``
jobs run it at once, the others wait.

:meth:`Registry.check` marks, at start, each model that cannot run (a required file missing or with
another SHA-256, or, where this process runs models, a failed load) as unavailable with its reason
(:attr:`Registry.unavailable`); :func:`suspended` says why a model's rules route nothing now (it is
unavailable, or it is a demonstration model and the site has not turned ``demo_models`` on), and
:func:`default_rules` gives the manifests' default rules that are in force.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import CodeSpec, LabelSpec, Manifest, ModelFile, scan
from dicomnode.inference.result import InferenceResult, ModelInput
from dicomnode.settings import Rule

__all__ = [
    "IN_FORCE",
    "CodeSpec",
    "LabelSpec",
    "Manifest",
    "Model",
    "ModelFile",
    "Registry",
    "RuntimeOptions",
    "default_rules",
    "load_manifests",
    "rule_states",
    "suspended",
]

IN_FORCE = "in force"  # a rule that gives jobs now (rule_states)
DEMO_OFF = "is a demonstration model, routed only with demo_models = true (DICOMNODE_DEMO_MODELS)"


@dataclass(frozen=True)
class RuntimeOptions:
    """How models run: the device asked for, threads per session (0: the runtime's default), jobs at once."""

    device: str = "auto"
    threads: int = 0
    concurrency: int = 1


class Model(Protocol):
    """A loaded model: one call per series (a 3D volume or a 2D image), returning a typed result."""

    manifest: Manifest
    device: str

    def run(self, image: ModelInput) -> InferenceResult: ...


def load_manifests(models_dir: Path) -> dict[str, Manifest]:
    """The valid manifests under ``models_dir`` by id (bad ones are left out; :func:`scan` says why)."""
    return scan(models_dir)[0]


def _load_deepbet(manifest: Manifest, options: RuntimeOptions) -> Model:
    from dicomnode.inference.deepbet import DeepbetModel  # ONNX Runtime; torch only as its fallback

    return DeepbetModel(manifest, options.device, options.threads)


def _load_onnx(manifest: Manifest, options: RuntimeOptions) -> Model:
    from dicomnode.inference.engine import GenericModel  # onnxruntime is imported only here

    return GenericModel(manifest, options.device, options.threads)


LOADERS: dict[str, Callable[[Manifest, RuntimeOptions], Model]] = {"deepbet": _load_deepbet, "onnx": _load_onnx}


class Registry:
    """The manifests under ``models_dir``, the models loaded so far (kept warm), and why others failed."""

    def __init__(self, models_dir: Path, device: str = "auto", options: RuntimeOptions | None = None) -> None:
        self.options = options or RuntimeOptions(device=device)
        self.manifests, self.errors = scan(models_dir)
        self._loaded: dict[str, Model] = {}
        self._lock = threading.Lock()
        self._limits = {m: threading.BoundedSemaphore(self.options.concurrency) for m in self.manifests}
        self.unavailable: dict[str, str] = {}  # model id -> why it cannot run (set by check)

    def check(self, load: bool = False) -> dict[str, str]:
        """Mark each model that cannot run as unavailable, with its reason; returns those (id -> reason).

        Every required file must be there with its SHA-256; with ``load`` (a process that runs models),
        the model must load too (and stays warm). A model that passes is available again. A model with
        a ``[remote]`` backend that may run remotely is not judged here: without its files it goes remote.
        """
        for model_id, manifest in self.manifests.items():
            if manifest.remote is not None and manifest.remote.placement != "local":
                continue  # it runs on its remote node when it cannot run here (dicomnode.remote)
            try:
                for file in manifest.required_files:
                    manifest.resolve(file)
                if load:
                    self.get(model_id)
            except ModelError as exc:
                self.unavailable[model_id] = _reason(model_id, str(exc))
            else:
                self.unavailable.pop(model_id, None)
        return dict(self.unavailable)

    def get(self, model_id: str) -> Model:
        """The warm model ``model_id``, loading it on first use; a failed load is remembered."""
        with self._lock:
            if model_id not in self._loaded:
                manifest = self.manifests.get(model_id)
                if manifest is None:
                    raise ModelError(self.errors.get(model_id, f"no model {model_id!r} under the models directory"))
                try:
                    self._loaded[model_id] = LOADERS[manifest.backend](manifest, self.options)
                except ModelError as exc:
                    self.errors[model_id] = str(exc)
                    raise
                self.errors.pop(model_id, None)
            return self._loaded[model_id]

    def is_warm(self, model_id: str) -> bool:
        return model_id in self._loaded

    def run(self, model_id: str, image: ModelInput) -> InferenceResult:
        """Run the warm model under its concurrency limit."""
        model = self.get(model_id)
        with self._limits[model_id]:
            return model.run(image)


def _reason(model_id: str, message: str) -> str:
    """``message`` without the "model <id>: " that each ModelError starts with."""
    prefix = f"model {model_id}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def suspended(manifests: Mapping[str, Manifest], unavailable: Mapping[str, str], demo_models: bool
              ) -> dict[str, str]:
    """Model id -> why the rules that name it route nothing now, in one sentence that names the model:
    it cannot run (``unavailable``, from :meth:`Registry.check`), or it is a demonstration model and
    ``demo_models`` is off."""
    off = {} if demo_models else {m.id: f"model {m.id} {DEMO_OFF}" for m in manifests.values() if m.demonstration}
    return {**off, **{m: f"model {m} unavailable: {why}" for m, why in unavailable.items()}}


def rule_states(rules: Iterable[Rule], manifests: Mapping[str, Manifest], unavailable: Mapping[str, str],
                demo_models: bool) -> dict[str, str]:
    """Rule name -> "in force" when the rule gives jobs now, or why not in routing's own words (a study's
    reason says the same): its model is suspended (:func:`suspended`), or not installed."""
    held = suspended(manifests, unavailable, demo_models)

    def state(rule: Rule) -> str:
        if rule.model in held:
            return f"suspended: {held[rule.model]}"
        if rule.model not in manifests:
            return f"gives no job: names unknown model {rule.model!r}"
        return IN_FORCE

    return {rule.name: state(rule) for rule in rules}


def default_rules(manifests: Mapping[str, Manifest], demo_models: bool) -> list[Rule]:
    """The manifests' default rules in force: a demonstration model's only with ``demo_models``."""
    return [m.default for m in manifests.values() if demo_models or not m.demonstration]
