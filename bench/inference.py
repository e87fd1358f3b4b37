"""Inference, one table: every model and runtime on this machine, ratios from the same run, the seeds' figures beside.

    PYTHONPATH=. .venv/bin/python bench/inference.py [--threads 2] [--runs 30] [--deepbet-runs 3]
                                                     [--node-runs 2] [--skip-large]

Rows: the radiograph classifier (torch eager, ONNX Runtime fp32, int8), the CT UNet (torch eager, ONNX
Runtime; and a sliding window over a 512 x 512 x 200 CT-sized array), deepbet on the MNI152 series
(TorchScript vs ONNX Runtime, with the Dice of their masks), and the cold start of a whole node
(``dicomnode serve`` until its port is open and every model is warm) with the bundled models all on
ONNX Runtime against the same node with deepbet on TorchScript (torch loaded). Each row runs in its own
process, so that its peak RSS is its own. Medians; every ratio is against the reference row of the same
run. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.inference_models import child as model_row  # noqa: E402
from bench.inference_models import median_time  # noqa: E402
from bench.models import start_to_ready  # noqa: E402
from training.common import dice  # noqa: E402

MNI = REPO.parent / "shared" / "data" / "mr_t1_brain_mni152"
DEEPBET = REPO / "models" / "deepbet"
BUNDLED = ("cxr-demo", "ct-nodule-demo", "deepbet")
SEEDS = {  # the seed papers' figures, as quoted in the issue (their hardware, not this machine)
    ("cxr", "torch"): "CheXNet 0.3 s/image; COVID-Net 0.2 s/image",
    ("cxr", "ort-int8"): "EfficientNet-B0 210 ms -> 120 ms pruned+quantized",
    ("ct", "torch"): "U-Net 0.6 s/image",
}
LABELS = {"cxr": "radiograph DenseNet 1x64x64", "ct": "CT UNet 96^3, one pass",
          "window": "CT UNet 512x512x200, 64^3 windows, overlap 0.25", "deepbet": "deepbet, MNI152 233x197x189",
          "node": "node cold start (cxr, CT, deepbet)"}
REFERENCE = {("cxr", "ort-fp32"): "torch", ("cxr", "ort-int8"): "ort-fp32", ("ct", "ort-fp32"): "torch",
             ("deepbet", "onnxruntime"): "torchscript", ("node", "onnx-only"): "torch"}


def deepbet_row(runtime: str, threads: int, runs: int, mask_path: Path) -> dict[str, object]:
    """deepbet on the MNI152 series, warm; the mask is saved for the Dice in the parent."""
    import resource

    from pydicom import dcmread

    from dicomnode.inference.deepbet import DeepbetModel
    from dicomnode.inference.manifest import Manifest
    from dicomnode.inference.volume import build_volume

    volume = build_volume([dcmread(p) for p in sorted(MNI.iterdir())])
    if runtime == "torchscript":
        import torch

        torch.set_num_threads(threads)
    started = time.perf_counter()
    model = DeepbetModel(Manifest.read(DEEPBET / "manifest.toml"), "cpu", threads, runtime)  # type: ignore[arg-type]
    load = time.perf_counter() - started
    last: dict[str, np.ndarray] = {}

    def run() -> None:
        last["mask"] = model.predict(volume.array, volume.affine)

    seconds = median_time(run, runs, warmups=1)
    np.save(mask_path, last["mask"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "load_s": load, "peak_rss_mb": peak}


def node_row(variant: str, runs: int) -> dict[str, object]:
    """``dicomnode serve`` on the bundled models; ``torch``: deepbet without its ONNX files (TorchScript)."""
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder)
        for model_id in BUNDLED:
            (models / model_id).mkdir()
            for path in (REPO / "models" / model_id).iterdir():
                if variant == "onnx-only" or not (model_id == "deepbet" and path.suffix == ".onnx"):
                    (models / model_id / path.name).symlink_to(path)
        starts = [start_to_ready(models, BUNDLED) for _ in range(runs)]
    runtime = "torchscript" if "runtime=torchscript" in starts[0].log else "onnxruntime"
    return {"seconds": statistics.median(s.seconds for s in starts), "load_s": float("nan"),
            "peak_rss_mb": statistics.median(s.peak_rss_mb for s in starts),
            "note": f"deepbet on {runtime}; torch loaded: {'yes' if starts[0].torch_loaded else 'no'}"}


def _child(args: argparse.Namespace) -> dict[str, object]:
    kind, runtime = args.child
    if kind == "deepbet":
        return deepbet_row(runtime, args.threads, args.deepbet_runs, Path(args.mask))
    return model_row(kind, runtime, args.threads, args.runs)


def _rows(skip_large: bool) -> list[tuple[str, str]]:
    rows = [("cxr", "torch"), ("cxr", "ort-fp32"), ("cxr", "ort-int8"), ("ct", "torch"), ("ct", "ort-fp32")]
    rows += [] if skip_large else [("window", "ort-fp32")]
    rows += [("deepbet", "torchscript"), ("deepbet", "onnxruntime")] if MNI.is_dir() else []
    return rows


def measure(args: argparse.Namespace, folder: Path) -> dict[tuple[str, str], dict[str, object]]:
    results: dict[tuple[str, str], dict[str, object]] = {}
    for kind, runtime in _rows(args.skip_large):
        command = [sys.executable, __file__, "--threads", str(args.threads), "--runs", str(args.runs),
                   "--deepbet-runs", str(args.deepbet_runs), "--mask", str(folder / f"{runtime}.npy"),
                   "--child", kind, runtime]
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
        results[(kind, runtime)] = json.loads(out.stdout.strip().splitlines()[-1])
    if MNI.is_dir():
        agreement = dice(np.load(folder / "onnxruntime.npy"), np.load(folder / "torchscript.npy"))
        results[("deepbet", "onnxruntime")]["note"] = f"Dice vs TorchScript {agreement:.5f}"
    for variant in ("torch", "onnx-only"):
        results[("node", variant)] = node_row(variant, args.node_runs)
    return results


def table(results: dict[tuple[str, str], dict[str, object]]) -> list[str]:
    lines = ["| model | runtime | time | ratio | load | peak RSS | seeds' figure / note |",
             "|---|---|---|---|---|---|---|"]
    for (kind, runtime), r in results.items():
        seconds = float(r["seconds"])  # type: ignore[arg-type]
        value = f"{seconds * 1000:.2f} ms/image" if kind == "cxr" else f"{seconds:.3f} s/volume"
        value = f"{seconds:.2f} s to ready" if kind == "node" else value
        reference = REFERENCE.get((kind, runtime))
        referenced = (kind, runtime) in {(k, r) for (k, _), r in REFERENCE.items()}
        ratio = ("reference" if referenced else "") if reference is None else (
            f"{float(results[(kind, reference)]['seconds']) / seconds:.2f}x {reference}"  # type: ignore[arg-type]
            if (kind, reference) in results else "")
        load = float(r["load_s"])  # type: ignore[arg-type]
        note = "; ".join(str(x) for x in (SEEDS.get((kind, runtime)), r.get("note")) if x)
        lines.append(f"| {LABELS[kind]} | {runtime} | {value} | {ratio} | "
                     f"{'' if np.isnan(load) else f'{load:.2f} s'} | {float(r['peak_rss_mb']):.0f} MB | {note} |")  # type: ignore[arg-type]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per classifier / CT UNet row")
    parser.add_argument("--deepbet-runs", type=int, default=3)
    parser.add_argument("--node-runs", type=int, default=2, help="cold starts per node variant")
    parser.add_argument("--skip-large", action="store_true", help="leave out the 512 x 512 x 200 sliding window")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "RUNTIME"), help=argparse.SUPPRESS)
    parser.add_argument("--mask", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    if not (DEEPBET / "model.onnx").is_file():
        sys.exit("models/deepbet/*.onnx missing: run training/export_deepbet.py (scripts/setup.sh does)")
    with tempfile.TemporaryDirectory() as folder:
        results = measure(args, Path(folder))
    print(f"threads {args.threads}; medians of {args.runs} (classifier, CT UNet), {args.deepbet_runs} (deepbet), "
          f"1 (window), {args.node_runs} (node cold start); ratio = reference time / this time")
    print("\n".join(table(results)))
    for kind in ("cxr", "ct"):
        ratio = float(results[(kind, "torch")]["seconds"]) / float(results[(kind, "ort-fp32")]["seconds"])  # type: ignore[arg-type]
        verdict = "met" if ratio >= 2 else "NOT met"
        print(f"goal ONNX Runtime >= 2x torch eager, {LABELS[kind]}: {ratio:.1f}x, {verdict}")


if __name__ == "__main__":
    main()
