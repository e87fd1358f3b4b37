"""A static QDQ int8 variant of the radiograph classifier, calibrated on phantoms; shipped only if it earns it.

    .venv/bin/python -m training.quantize_cxr [--source models/cxr-demo] [--threads 2] [--runs 200]

Calibrates on 64 phantoms (their own seed range), then measures on 200 fresh validation phantoms: ms per
image (batch 1, fp32 and int8 interleaved, medians) and the agreement of findings at the operating
threshold. The int8 model goes to ``models/cxr-demo-int8/`` only when it is faster *and* agrees with
fp32 on at least 98 % of findings; the figures always go to ``training/int8_cxr.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dicomnode.fl.network import ort_session
from training.common import REPO, auc, sha256, versions, write_json
from training.phantoms import VALIDATION_SEED_BASE, radiograph
from training.train_cxr import PHANTOM_SHAPE, prepare, shipped_threshold

CALIBRATION_SEED_BASE = 30_000_000
AGREEMENT = 0.98


def phantom_batch(seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """training.phantoms radiographs prepared as the engine prepares them, and their truth."""
    drawn = [radiograph(s, PHANTOM_SHAPE) for s in seeds]
    return np.stack([prepare(p.image) for p in drawn])[:, None], np.asarray([p.finding for p in drawn], dtype=bool)


class Phantoms:
    """onnxruntime's CalibrationDataReader protocol: one zscored phantom per call."""

    def __init__(self, seeds: list[int], input_name: str) -> None:
        self._x, _ = phantom_batch(seeds)
        self._name = input_name
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._x):
            return None
        self._i += 1
        return {self._name: self._x[self._i - 1:self._i]}

    def rewind(self) -> None:
        self._i = 0


def quantize(source: Path, target: Path, calibration: int) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        name = onnx.load(str(prepared)).graph.input[0].name
        reader = Phantoms([CALIBRATION_SEED_BASE + i for i in range(calibration)], name)
        quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO / "models" / "cxr-demo")
    parser.add_argument("--target", type=Path, default=REPO / "models" / "cxr-demo-int8")
    parser.add_argument("--report", type=Path, default=REPO / "training" / "int8_cxr.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200, help="timed images per model")
    parser.add_argument("--validation", type=int, default=200)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "model.onnx"
        quantize(args.source / "model.onnx", int8_path, 64)
        fp32 = ort_session(args.source / "model.onnx", args.threads)
        int8 = ort_session(int8_path, args.threads)
        x, truth = phantom_batch([VALIDATION_SEED_BASE + i for i in range(args.validation)])
        scores = {}
        for name, run in (("fp32", fp32), ("int8", int8)):
            logits = np.concatenate([run(x[i:i + 20]) for i in range(0, len(x), 20)])[:, 0]
            scores[name] = 1 / (1 + np.exp(-logits.astype(np.float64)))
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for i in range(10):  # warm-up
            fp32(x[i:i + 1])
            int8(x[i:i + 1])
        for i in range(args.runs):  # interleaved, so that the machine's load hits both alike
            image = x[i % len(x):i % len(x) + 1]
            for name, run in (("fp32", fp32), ("int8", int8)):
                t = time.perf_counter()
                run(image)
                times[name].append(time.perf_counter() - t)
        ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
        threshold = shipped_threshold()
        agreement = float(((scores["fp32"] >= threshold) == (scores["int8"] >= threshold)).mean())
        faster = ms["int8"] < ms["fp32"]
        ship = faster and agreement >= AGREEMENT
        report = {
            "ms_per_image_median": {k: round(v, 3) for k, v in ms.items()},
            "speedup_int8": round(ms["fp32"] / ms["int8"], 3),
            "agreement_of_findings": agreement, "n": args.validation, "first_seed": VALIDATION_SEED_BASE,
            "auc": {name: auc(s, truth) for name, s in scores.items()},
            "max_abs_probability_difference": float(np.abs(scores["fp32"] - scores["int8"]).max()),
            "bytes": {"fp32": (args.source / "model.onnx").stat().st_size, "int8": int8_path.stat().st_size},
            "threads": args.threads, "timed_runs": args.runs, "faster": faster, "shipped": ship,
            "rule": f"ship only if faster and agreement >= {AGREEMENT}",
            "wall_s": round(time.perf_counter() - started, 1), "versions": versions(),
        }
        if ship:
            args.target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(int8_path, args.target / "model.onnx")
            digest = sha256(args.target / "model.onnx")
            text = (args.source / "manifest.toml").read_text()
            old = sha256(args.source / "model.onnx")
            text = (text.replace(old, digest).replace('id = "cxr-demo"', 'id = "cxr-demo-int8"')
                    .replace("(DenseNet;", "(DenseNet, static int8 QDQ;")
                    .replace('name = "cxr-demo"', 'name = "cxr-demo-int8"'))
            (args.target / "manifest.toml").write_text(text)
            write_json(args.target / "metrics.json", {**report, "model": "cxr-demo-int8", "onnx_sha256": digest,
                                                      "smoke": False, "source_sha256": old})
        elif args.target.exists():
            shutil.rmtree(args.target)
    write_json(args.report, report)
    print(report)


if __name__ == "__main__":
    main()
