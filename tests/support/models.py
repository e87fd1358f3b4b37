"""Small ONNX models with analytic answers, built at test time, dropped into a models folder with a manifest.

- a 3D "segmenter": sigmoid(10 * (x - threshold)), so that label 1 is exactly ``x > threshold``;
- a 2D "classifier": sigmoid(k * (mean of a region of the input - c)), one class;
- broken variants: an output of the wrong shape, NaN outputs.

They are intensity functions, not AI, and their manifests say so; the node runs them through the same
engine, pipeline, builders and sender as any site model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import TensorProto, helper

SEGMENTER_MANIFEST = """
manifest_version = 2
id = "{model_id}"
version = "1.0"
name = "test-only intensity threshold"
task = "segmentation"
backend = "onnx"
framework = "onnx"
licence = "Apache-2.0"
series_number_base = 8000
intended_use = "Test fixture only: labels voxels brighter than {threshold}. Not a medical device."

[[files]]
name = "model.onnx"
sha256 = "{sha256}"

[input]
modalities = {modalities}
dimensions = 3
orientation = "{orientation}"
min_slices = 4
{input_extra}

[output]
activation = "none"
mode = "threshold"
{output_extra}

[[output.labels]]
number = 1
label = "Bright"
colour = [255, 0, 0]
category = {{ scheme = "SCT", value = "91723000", meaning = "Anatomical Structure" }}
type = {{ scheme = "SCT", value = "12738006", meaning = "Brain" }}

[default_rule]
name = "{rule}"
match = {{ Modality = "{modality_re}", SeriesDescription = "{description_re}" }}
"""

CLASSIFIER_MANIFEST = """
manifest_version = 2
id = "{model_id}"
version = "2.1"
name = "test-only region brightness classifier"
task = "classification"
backend = "onnx"
licence = "Apache-2.0"
series_number_base = 7000
intended_use = "Test fixture only: probability = sigmoid({k} * (mean of a region - {c})). Not a medical device."

[[files]]
name = "model.onnx"
sha256 = "{sha256}"

[input]
modalities = ["DX", "CR"]
dimensions = 2
size = [{size}, {size}]
fit = "{fit}"

[input.intensity]
voi_lut = true
invert_monochrome1 = true
normalise = "minmax"

[output]
activation = "sigmoid"
reference = {{ Opacity = [0.0, 0.3] }}
drift_window = 2

[output.explanation]
patch = 8
stride = 4

[[output.classes]]
index = 0
label = "Opacity"
finding = {{ scheme = "SCT", value = "263656001", meaning = "Opacity" }}
threshold = {operating}

[default_rule]
name = "dx-chest"
match = {{ Modality = "^(DX|CR)$" }}
"""


def _save(folder: Path, graph: onnx.GraphProto) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def threshold_graph(threshold: float, broken: str = "", gain: float = 10.0) -> onnx.GraphProto:
    """sigmoid(gain * (x - threshold)) over (1, 1, D, H, W); ``broken``: "shape" (a mean) or "nan".

    A gentle ``gain`` makes the output a smooth function of x, as a real model's probabilities are,
    so that resampling them back to the source grid is accurate.
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, None, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None, None, None])
    nodes = [helper.make_node("Sub", ["x", "t"], ["d"]), helper.make_node("Mul", ["d", "k"], ["z"])]
    if broken == "shape":
        nodes += [helper.make_node("ReduceMean", ["z"], ["m"], axes=[4], keepdims=1),
                  helper.make_node("Sigmoid", ["m"], ["y"])]
    else:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["y"]))
    gain = float("nan") if broken == "nan" else gain
    init = [helper.make_tensor("t", TensorProto.FLOAT, [], [threshold]),
            helper.make_tensor("k", TensorProto.FLOAT, [], [gain])]
    return helper.make_graph(nodes, "threshold", [x], [y], init)


def write_threshold_model(models_dir: Path, threshold: float, *, model_id: str = "threshold-test",
                          orientation: str = "source", input_extra: str = "", output_extra: str = "",
                          broken: str = "", modalities: tuple[str, ...] = ("MR",), rule: str = "crash-test",
                          modality_re: str = "^MR$", description_re: str = "^CRASHTEST", gain: float = 10.0) -> Path:
    """models_dir/<model_id>/{model.onnx,manifest.toml}: label 1 where x > threshold."""
    folder = models_dir / model_id
    sha = _save(folder, threshold_graph(threshold, broken, gain))
    (folder / "manifest.toml").write_text(SEGMENTER_MANIFEST.format(
        model_id=model_id, threshold=threshold, sha256=sha, orientation=orientation, input_extra=input_extra,
        output_extra=output_extra, modalities=list(modalities), rule=rule, modality_re=modality_re,
        description_re=description_re).replace("'", '"'))
    return folder


def classifier_graph(region: tuple[int, int, int, int], k: float, c: float) -> onnx.GraphProto:
    """(1, 1, H, W) -> (1, 1): k * (mean of x[..., r0:r1, c0:c1] - c), a logit (the manifest applies sigmoid)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    r0, r1, c0, c1 = region
    init = [helper.make_tensor("starts", TensorProto.INT64, [2], [r0, c0]),
            helper.make_tensor("ends", TensorProto.INT64, [2], [r1, c1]),
            helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
            helper.make_tensor("shape", TensorProto.INT64, [2], [1, 1]),
            helper.make_tensor("c", TensorProto.FLOAT, [], [c]),
            helper.make_tensor("k", TensorProto.FLOAT, [], [k])]
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=1),
             helper.make_node("Reshape", ["m", "shape"], ["v"]),
             helper.make_node("Sub", ["v", "c"], ["d"]),
             helper.make_node("Mul", ["d", "k"], ["y"])]
    return helper.make_graph(nodes, "classifier", [x], [y], init)


def write_classifier(models_dir: Path, *, model_id: str = "region-classifier", size: int = 64,
                     region: tuple[int, int, int, int] = (24, 40, 24, 40), k: float = 8.0, c: float = 0.5,
                     operating: float = 0.5, fit: str = "resize") -> Path:
    """models_dir/<model_id>/: probability = sigmoid(k * (mean of ``region`` of the min-max input - c))."""
    folder = models_dir / model_id
    sha = _save(folder, classifier_graph(region, k, c))
    (folder / "manifest.toml").write_text(CLASSIFIER_MANIFEST.format(
        model_id=model_id, sha256=sha, size=size, k=k, c=c, operating=operating, fit=fit))
    return folder
