"""A tiny ONNX model, built at test time, for tests that need many fast inferences (crash soak).

It is an intensity threshold, not AI, and its manifest says so; the node runs it through the same
ONNX Runtime backend, pipeline, SEG/SR builders and sender as any model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import TensorProto, helper

THRESHOLD_MANIFEST = """
id = "threshold-test"
version = "1.0"
name = "test-only intensity threshold"
backend = "onnx"
framework = "onnx"
licence = "Apache-2.0"
min_slices = 4
series_number_base = 8000
intended_use = "Test fixture only: labels voxels brighter than {threshold}. Not a medical device."

[[files]]
name = "model.onnx"
source = "model.onnx"
sha256 = "{sha256}"

[[labels]]
number = 1
label = "Bright"
category = {{ scheme = "SCT", value = "91723000", meaning = "Anatomical Structure" }}
type = {{ scheme = "SCT", value = "12738006", meaning = "Brain" }}

[default_rule]
name = "crash-test"
match = {{ Modality = "^MR$", SeriesDescription = "^CRASHTEST" }}
"""


def write_threshold_model(models_dir: Path, threshold: float) -> Path:
    """models_dir/threshold-test/{model.onnx,manifest.toml}: sigmoid(10 * (x - threshold))."""
    folder = models_dir / "threshold-test"
    folder.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, None, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None, None, None])
    nodes = [
        helper.make_node("Sub", ["x", "t"], ["d"]),
        helper.make_node("Mul", ["d", "k"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["y"]),
    ]
    init = [helper.make_tensor("t", TensorProto.FLOAT, [], [threshold]),
            helper.make_tensor("k", TensorProto.FLOAT, [], [10.0])]
    model = helper.make_model(helper.make_graph(nodes, "threshold", [x], [y], init),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.toml").write_text(THRESHOLD_MANIFEST.format(threshold=threshold, sha256=sha))
    return folder
