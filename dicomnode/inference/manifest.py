"""The model manifest, version 2 (``models/<id>/manifest.toml``): a validated, frozen description.

A site adds a model by dropping a folder with a manifest and its files; this module is the only place
that knows the manifest's keys. Unknown keys are refused (``extra="forbid"``), and every error names the
model and the key. ``models/README.md`` documents each key with a worked example per task.

Files are found beside the manifest or, with ``source = "dist:<distribution>:<path>"``, inside an
installed Python distribution (how deepbet ships its weights); each is checked against its SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dicomnode.errors import ModelError
from dicomnode.settings import Rule

MANIFEST_VERSION = 2


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CodeSpec(_Strict):
    """A coded concept: ``{ scheme = "SCT", value = "12738006", meaning = "Brain" }``."""

    scheme: str = Field(min_length=1, max_length=16)
    value: str = Field(min_length=1, max_length=64)
    meaning: str = Field(min_length=1, max_length=64)


class ModelFile(_Strict):
    name: str
    source: str = ""
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    optional: bool = False  # derived at setup (e.g. training/export_deepbet.py); the model runs without it

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class Intensity(_Strict):
    """Intensity handling, applied in this order after rescale slope/intercept."""

    voi_lut: bool = False  # apply the image's own VOI LUT or window (radiographs)
    invert_monochrome1: bool = True  # MONOCHROME1 images are inverted so that bright means dense
    window: tuple[float, float] | None = None  # centre, width (PS3.3 C.11.2.1.2 linear function)
    clip: tuple[float, float] | None = None  # lowest, highest value kept
    normalise: Literal["none", "zscore", "fixed", "minmax"] = "none"
    mean: float = 0.0  # for normalise = "fixed"
    std: float = Field(default=1.0, gt=0)
    channels: Literal[1, 3] = 1  # 3 replicates the grey image for ImageNet-style inputs


class Tiling(_Strict):
    """A sliding window over the model-grid array, as MONAI's SlidingWindowInferer."""

    roi: tuple[int, ...]
    overlap: float = Field(default=0.25, ge=0, lt=1)
    blend: Literal["constant", "gaussian"] = "gaussian"


class Priors(_Strict):
    """``[input.priors]``: the patient's earlier studies the model compares with (:mod:`dicomnode.query.priors`).

    Always the same Patient ID; at most ``count`` studies, newest first, at most ``max_age_days`` older
    than the current study; a series of the same modality (``same_modality``), body part
    (``same_body_part``, BodyPartExamined) and, when given, a SeriesDescription matching
    ``series_description`` (a regular expression, searched).
    """

    count: int = Field(default=1, ge=1, le=5)
    max_age_days: float = Field(default=3650.0, gt=0)
    same_modality: bool = True
    same_body_part: bool = False
    series_description: str = ""

    @field_validator("series_description")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"input.priors.series_description is not a regular expression: {exc}") from None
        return value


class InputSpec(_Strict):
    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()  # empty: any image storage SOP class of those modalities
    dimensions: Literal[2, 3] = 3
    orientation: Literal["source", "RAS", "LPS"] = "source"  # 3D: canonical axis order of the model grid
    spacing: tuple[float, ...] | None = None  # 3D: mm per model axis; 2D: not used
    size: tuple[int, ...] | None = None  # the model grid's shape (2D: rows, columns)
    fit: Literal["resize", "pad"] = "resize"  # 2D: how an image is brought to ``size``
    min_slices: int = Field(default=1, ge=1)
    intensity: Intensity = Intensity()
    tiling: Tiling | None = None
    priors: Priors | None = None  # compare with the patient's prior studies (segmentation, 3D)

    @model_validator(mode="after")
    def _shapes(self) -> InputSpec:
        for key in ("spacing", "size"):
            value = getattr(self, key)
            if value is not None and (len(value) != self.dimensions or min(value) <= 0):
                raise ValueError(f"input.{key} needs {self.dimensions} positive values")
        if self.spacing is not None and self.size is not None:
            raise ValueError("input.spacing and input.size exclude each other")
        if self.tiling is not None and len(self.tiling.roi) != self.dimensions:
            raise ValueError(f"input.tiling.roi needs {self.dimensions} values")
        return self


class LabelSpec(_Strict):
    """One segment: its number in the label map, name and codes (SNOMED CT category and type)."""

    number: int = Field(ge=1, le=255)
    label: str = Field(min_length=1, max_length=64)
    category: CodeSpec
    type: CodeSpec
    colour: tuple[int, int, int] | None = None  # display colour, sRGB 0-255
    threshold: float = Field(default=0.5, ge=0, le=1)  # for mode = "threshold"


class ClassSpec(_Strict):
    """One output of a classifier: its index in the output vector, finding code and operating point."""

    index: int = Field(ge=0)
    label: str = Field(min_length=1, max_length=64)
    finding: CodeSpec
    threshold: float = Field(ge=0, le=1)


class Explanation(_Strict):
    """Occlusion sensitivity for the positive classes (model-input pixels)."""

    patch: int = Field(default=16, ge=1)
    stride: int = Field(default=8, ge=1)


class FindingSpec(_Strict):
    """``[output.finding]``: a "present" finding derived from a segmentation, for any segmenter.

    Its probability is the highest voxel probability of label ``label`` inside the connected components
    that are kept (at least ``output.min_component_mm3``), 0 where none is kept; present at ``threshold``.
    """

    label: int = Field(ge=1, le=255)
    name: str = Field(min_length=1, max_length=64)
    code: CodeSpec
    threshold: float = Field(default=0.5, ge=0, le=1)


class OutputSpec(_Strict):
    activation: Literal["none", "softmax", "sigmoid"] = "none"  # what the node applies to the raw output
    mode: Literal["argmax", "threshold"] = "threshold"  # segmentation: label = argmax, or per-class threshold
    labels: tuple[LabelSpec, ...] = ()
    classes: tuple[ClassSpec, ...] = ()
    explanation: Explanation | None = None
    min_component_mm3: float = Field(default=0.0, ge=0)  # segmentation: smaller components are dropped
    finding: FindingSpec | None = None  # segmentation: a finding from the kept components of one label
    reference: dict[str, tuple[float, float]] = Field(default_factory=dict)  # output name -> expected range
    drift_window: int = Field(default=20, ge=1)  # the last N outputs compared with ``reference``


class OutputReference(_Strict):
    """One output's distribution on the reference draws: quantiles at ``[reference].levels``, mean, std."""

    quantiles: tuple[float, ...]
    mean: float
    std: float = Field(ge=0)


class Reference(_Strict):
    """``[reference]``: the training inputs' statistics after preprocessing, and the outputs on them
    (written by the training script; the distance and its use: :mod:`dicomnode.inference.distribution`)."""

    samples: int = Field(ge=1)
    levels: tuple[float, ...] = Field(min_length=1)
    quantiles: tuple[float, ...]  # median over the draws of each quantile of the network input
    scale: tuple[float, ...]  # standard deviation of each over the draws
    threshold: float = Field(gt=0)  # a distance above it: outside the training distribution
    template_shape: tuple[int, ...] | None = None  # 2D: the mean training input, block-averaged
    template: tuple[float, ...] = ()
    correlation: tuple[float, float] | None = None  # median and spread of the correlation with the template
    outputs: dict[str, OutputReference] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _lengths(self) -> Reference:
        if not len(self.levels) == len(self.quantiles) == len(self.scale):
            raise ValueError("reference.levels, quantiles and scale need one value each per level")
        if self.template and (self.template_shape is None or self.correlation is None
                              or len(self.template) != math.prod(self.template_shape)):
            raise ValueError("reference.template needs template_shape (its size) and correlation")
        return self


class DefaultRule(_Strict):
    name: str = ""
    match: dict[str, str] = Field(default_factory=dict)


class RemoteBackend(_Strict):
    """``[remote]``: another dicomnode that serves this model over DICOMweb (see :mod:`dicomnode.remote`)."""

    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    user: str = Field(min_length=1, max_length=64)
    password_file: Path
    tls_ca_file: Path | None = None
    placement: Literal["local", "remote", "prefer-local"] = "prefer-local"
    max_local_queue: int = Field(default=4, ge=0)
    poll_seconds: float = Field(default=2.0, gt=0)
    timeout_seconds: float = Field(default=900.0, gt=0)
    # PS3.15 Annex E options applied on top of the Basic profile (dicomnode.remote.options); none: Basic only
    deid_options: tuple[Literal["retain-longitudinal-temporal-modified-dates", "retain-patient-characteristics",
                                "clean-descriptors"], ...] = ()


class Manifest(_Strict):
    """One model's manifest (version 2); ``directory`` is the folder it was read from."""

    manifest_version: Literal[2]
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = Field(min_length=1, max_length=16)
    name: str = Field(min_length=1)
    task: Literal["segmentation", "classification"]
    backend: Literal["onnx", "deepbet"] = "onnx"
    framework: str = ""
    licence: str = Field(min_length=1)
    intended_use: str = Field(min_length=1)
    demonstration: bool = False  # routed only with the setting demo_models; results never say POSITIVE
    series_number_base: int = Field(default=9000, ge=1, le=99000)
    files: tuple[ModelFile, ...] = Field(min_length=1)
    input: InputSpec
    output: OutputSpec
    default_rule: DefaultRule = DefaultRule()
    remote: RemoteBackend | None = None
    reference: Reference | None = None
    directory: Path = Path(".")

    @field_validator("intended_use")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return " ".join(value.split())

    @model_validator(mode="after")
    def _outputs(self) -> Manifest:
        if self.task == "segmentation" and not self.output.labels:
            raise ValueError("a segmentation model needs output.labels")
        if self.task == "classification" and not self.output.classes:
            raise ValueError("a classification model needs output.classes")
        if self.task == "classification" and self.output.mode == "argmax":
            raise ValueError("output.mode applies to segmentation only")
        numbers = [lab.number for lab in self.output.labels]
        finding = self.output.finding
        if finding is not None and self.task != "segmentation":
            raise ValueError("output.finding applies to segmentation only (a classifier has output.classes)")
        if finding is not None and finding.label not in numbers:
            raise ValueError(f"output.finding.label {finding.label} is not one of output.labels")
        if self.output.min_component_mm3 and self.task != "segmentation":
            raise ValueError("output.min_component_mm3 applies to segmentation only")
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            raise ValueError("output.labels numbers must be 1, 2, ... n (they are the SEG's segment numbers)")
        return self

    @property
    def labels(self) -> tuple[LabelSpec, ...]:
        return self.output.labels

    @property
    def min_slices(self) -> int:
        return self.input.min_slices

    @property
    def default(self) -> Rule:
        """The routing rule used when the configuration names none for this model."""
        return Rule(name=self.default_rule.name or self.id, model=self.id, match=self.default_rule.match)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The names of the outputs that monitoring follows: segment labels (ml) or class labels."""
        return tuple(c.label for c in self.output.classes) or tuple(lab.label for lab in self.output.labels)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Parse and validate one manifest; raises :class:`ModelError` naming the model and the key."""
        model = path.parent.name
        try:
            raw: dict[str, Any] = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ModelError(f"model {model}: manifest {path} cannot be read: {exc}") from exc
        model = str(raw.get("id", model))
        if raw.get("manifest_version") != MANIFEST_VERSION:
            raise ModelError(f"model {model}: manifest_version = {MANIFEST_VERSION} is required "
                             f"(got {raw.get('manifest_version')!r}); see models/README.md")
        try:
            return cls.model_validate({**raw, "directory": path.parent})
        except ValidationError as exc:
            raise ModelError(f"model {model}: manifest {path} is invalid: {_first_error(exc)}") from exc

    @property
    def required_files(self) -> tuple[ModelFile, ...]:
        """The files without which the model cannot run (all but the ``optional`` ones)."""
        return tuple(f for f in self.files if not f.optional)

    def file(self, name: str) -> ModelFile:
        """The file entry called ``name``; raises :class:`ModelError` when the manifest lists none."""
        for file in self.files:
            if file.name == name:
                return file
        raise ModelError(f"model {self.id}: the manifest lists no file {name}")

    def resolve(self, file: ModelFile) -> Path:
        """The path of ``file``, checked against its SHA-256 digest."""
        source = file.source or file.name
        if source.startswith("dist:"):
            _, dist, rel = source.split(":", 2)
            try:
                path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
            except importlib.metadata.PackageNotFoundError as exc:
                raise ModelError(f"model {self.id}: distribution {dist!r} is not installed") from exc
        else:
            path = self.directory / source
        if not path.is_file():
            raise ModelError(f"model {self.id}: file {file.name} is missing ({path})")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != file.sha256:
            raise ModelError(f"model {self.id}: file {file.name} has SHA-256 {digest}, the manifest says {file.sha256}")
        return path


def _first_error(exc: ValidationError) -> str:
    """One sentence for the first problem: the key's dotted path and what is wrong with it."""
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    return f"key '{key}': {error['msg']}"


def scan(models_dir: Path) -> tuple[dict[str, Manifest], dict[str, str]]:
    """Every manifest under ``models_dir``: the valid ones by id, and an error sentence per bad folder."""
    manifests: dict[str, Manifest] = {}
    errors: dict[str, str] = {}
    for path in sorted(models_dir.glob("*/manifest.toml")):
        try:
            manifest = Manifest.read(path)
        except ModelError as exc:
            errors[path.parent.name] = str(exc)
            continue
        if manifest.id in manifests:
            errors[path.parent.name] = f"model {manifest.id}: a second manifest with this id ({path})"
            continue
        manifests[manifest.id] = manifest
    return manifests, errors
