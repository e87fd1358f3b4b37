"""Train the CT lung-nodule demonstration segmenter (a MONAI 3D UNet) on procedural chest CT phantoms.

    .venv/bin/python -m training.train_ct [--out models/ct-nodule-demo] [--seed 0] [--threads 1] [--smoke]

The network sees 2 mm isotropic voxels in RAS order, HU clipped to [-1000, 400] and scaled by
(HU + 500) / 500, and returns one logit per voxel (nodule). Writes ``model.onnx`` (opset 17, one file,
any spatial size divisible by 8), ``manifest.toml`` (version 2) and ``metrics.json``: Dice and the
"nodule present" finding (a connected component of at least ``min_component_mm3`` at the voxel
threshold) on fresh-seed phantoms (0-3 nodules in turn), evaluated with ONNX Runtime on the exported
file; the threshold and the minimum volume are chosen on those validation seeds and written into the
manifest, where the node's engine applies the same rule. The network, its normalisation, seeding and
ONNX export are :mod:`dicomnode.fl.network`'s, shared with the federated rounds (``dicomnode fl``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.fl.network import (
    CLIP,
    MEAN,
    NETWORK,
    PATCH,
    SPACING,
    STD,
    export_network,
    loss,
    mirror,
    network,
    normalise,
    ort_session,
    seed_everything,
)
from training.common import DISCLAIMER, arguments, dice, sha256, versions, write_json
from training.phantoms import VALIDATION_SEED_BASE, ct_chest

VALIDATION_SHAPE = (64, 64, 64)
JITTER = 40.0  # mm: training patches also cover the surroundings that 64^3 grids show
# a quarter of the training patches are centred anywhere in the chest (ribs, spine, heart, chest wall):
# the hard negatives; a first 64^3 validation showed ribs and spine (HU clipped to 400) called nodules
BODY_FRACTION = 0.25
# chosen on the validation seeds (never the test seeds): the voxel threshold with the best mean Dice,
# then the smallest component volume (mm^3) with the best "nodule present" accuracy
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_VOLUMES = (0.0, 50.0, 100.0, 200.0, 300.0, 400.0)
FULL: dict[str, Any] = {"steps": 3500, "batch": 4, "lr": 2e-3, "validation": 48}
SMOKE: dict[str, Any] = {"steps": 2, "batch": 1, "lr": 1e-3, "validation": 2}


def train(seed: int, steps: int, batch_size: int, lr: float, patch: tuple[int, int, int]) -> Any:
    import torch

    model = network()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.05)
    loss_fn = loss()  # DiceCE, smoothing 1
    rng = np.random.default_rng(seed)
    model.train()
    overlap = [0, 0]
    started = time.perf_counter()
    for step in range(steps):
        xs, ys = [], []
        for i in range(batch_size):
            # training phantoms: seed * 1e6 + step * batch + i, below the validation and test seed ranges
            count = int(rng.choice(4, p=[0.1, 0.4, 0.3, 0.2]))  # more nodules than in validation: more signal
            centre = None
            if rng.random() < BODY_FRACTION:  # anywhere in the chest, nodules only where lungs are in view
                centre = (rng.uniform(-170, 170), rng.uniform(-120, 120), rng.uniform(-60, 60))
            phantom = ct_chest(seed * 1_000_000 + step * batch_size + i, patch, SPACING, nodules=count,
                               centre=centre, jitter=JITTER)
            x, y = mirror(normalise(phantom.hu), phantom.nodules.astype(np.float32), rng)  # orientation-robust
            xs.append(x)
            ys.append(y)
        x_t = torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, None]))
        y_t = torch.from_numpy(np.ascontiguousarray(np.stack(ys)[:, None]))
        logits = model(x_t)
        batch_loss = loss_fn(logits, y_t)
        optimiser.zero_grad()
        batch_loss.backward()
        optimiser.step()
        schedule.step()
        predicted, truth = logits.detach().numpy() > 0, y_t.numpy() > 0
        overlap[0] += 2 * int((predicted & truth).sum())
        overlap[1] += int(predicted.sum()) + int(truth.sum())
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step:4d}/{steps}  loss {batch_loss.item():.4f}  batch Dice (last 25) "
                  f"{overlap[0] / max(1, overlap[1]):.3f}  {time.perf_counter() - started:7.1f} s", flush=True)
            overlap = [0, 0]
    model.eval()
    return model


def kept_components(probability: np.ndarray, threshold: float, min_mm3: float) -> np.ndarray:
    """The mask ``probability >= threshold`` less its connected components under ``min_mm3`` (the engine's rule)."""
    from scipy import ndimage

    mask = probability >= threshold
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:] * SPACING**3
    keep: np.ndarray = np.isin(labels, 1 + np.flatnonzero(sizes >= min_mm3))
    return keep


def predict(onnx_path: Path, seeds: list[int], threads: int, shape: tuple[int, int, int],
            balanced: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(probability, truth mask) per phantom through ONNX Runtime; ``balanced``: 0-3 nodules in turn."""
    run = ort_session(onnx_path, threads)
    out = []
    for n, seed in enumerate(seeds):
        phantom = ct_chest(seed, shape, SPACING, nodules=n % 4 if balanced else None)
        logits = run(normalise(phantom.hu)[None, None])[0, 0]
        out.append((1.0 / (1.0 + np.exp(-logits.astype(np.float64))), phantom.nodules.astype(bool)))
    return out


def figures(predicted: list[tuple[np.ndarray, np.ndarray]], threshold: float, min_mm3: float) -> dict[str, Any]:
    """Dice (volumes with nodules) and "nodule present" (a kept component) against the truth."""
    dices, present, found, pooled = [], [], [], [0, 0]
    for probability, truth in predicted:
        mask = kept_components(probability, threshold, min_mm3)
        if truth.any():
            dices.append(dice(mask, truth))
        pooled[0] += 2 * int((mask & truth).sum())
        pooled[1] += int(mask.sum()) + int(truth.sum())
        present.append(bool(truth.any()))
        found.append(bool(mask.any()))
    p, f = np.asarray(present), np.asarray(found)
    return {
        "n": len(predicted), "with_nodules": int(p.sum()),
        "dice_mean": float(np.mean(dices)) if dices else float("nan"),
        "dice_pooled": pooled[0] / max(1, pooled[1]),
        "finding_accuracy": float((p == f).mean()),
        "finding_sensitivity": float((p & f).sum() / max(1, p.sum())),
        "finding_specificity": float((~p & ~f).sum() / max(1, (~p).sum())),
        "threshold": threshold, "min_component_mm3": min_mm3,
    }


def tune(predicted: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """The threshold with the best mean Dice, then the smallest minimum volume with the best accuracy."""
    threshold = max(THRESHOLDS, key=lambda t: (figures(predicted, t, 0.0)["dice_mean"], -abs(t - 0.5)))
    scores = [figures(predicted, threshold, v)["finding_accuracy"] for v in MIN_VOLUMES]
    return threshold, MIN_VOLUMES[int(np.argmax(scores))]


def manifest(onnx_sha: str, threshold: float, min_mm3: float) -> str:
    return f'''# CT lung-nodule segmenter: a {DISCLAIMER}.
# Written by training/train_ct.py (see training/README.md); manifest version 2 (models/README.md).
manifest_version = 2
id = "ct-nodule-demo"
version = "1.0.0"
name = "CT lung nodule demo (3D UNet; {DISCLAIMER})"
task = "segmentation"
backend = "onnx"
framework = "onnx"
licence = "Apache-2.0"
series_number_base = 9200
intended_use = """
{DISCLAIMER.capitalize()}. A small MONAI 3D UNet that segments solid nodule-like blobs in the lungs
of a chest CT, trained only on procedural phantoms drawn by training/phantoms.py (vessels are the
distractors). It demonstrates the node's segmentation path (SEG and volumes); its output says nothing
about a real patient.
"""

[[files]]
name = "model.onnx"
sha256 = "{onnx_sha}"

[input]
modalities = ["CT"]
dimensions = 3
orientation = "RAS"
spacing = [{SPACING}, {SPACING}, {SPACING}]
min_slices = 16

[input.intensity]
clip = [{CLIP[0]}, {CLIP[1]}]
normalise = "fixed"
mean = {MEAN}
std = {STD}

[input.tiling]
roi = [64, 64, 64]
overlap = 0.25
blend = "gaussian"

[output]
activation = "sigmoid"  # one logit per voxel
mode = "threshold"
min_component_mm3 = {min_mm3}  # smaller connected components of a label are dropped (chosen on validation seeds)

# "Nodule present": the highest nodule probability inside a kept component, against its threshold
[output.finding]
label = 1
name = "Nodule present"
code = {{ scheme = "SCT", value = "27925004", meaning = "Nodule" }}
threshold = {threshold}

# SNOMED CT: 49755003 Morphologically Abnormal Structure / 27925004 Nodule
[[output.labels]]
number = 1
label = "Nodule (synthetic-phantom demo; not clinical)"
colour = [255, 80, 80]
threshold = {threshold}
category = {{ scheme = "SCT", value = "49755003", meaning = "Morphologically Abnormal Structure" }}
type = {{ scheme = "SCT", value = "27925004", meaning = "Nodule" }}

[default_rule]
name = "ct-chest-nodule-demo"
match = {{ Modality = "^CT$", BodyPartExamined = "CHEST|THORAX|LUNG" }}
'''


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "models/ct-nodule-demo")
    settings = SMOKE if args.smoke else FULL
    seed_everything(args.seed, args.threads)
    patch = (16, 16, 16) if args.smoke else PATCH
    shape = (32, 32, 32) if args.smoke else VALIDATION_SHAPE
    started = time.perf_counter()
    model = train(args.seed, settings["steps"], settings["batch"], settings["lr"], patch)
    train_s = time.perf_counter() - started
    out: Path = args.out
    onnx_path = out / "model.onnx"
    export_network(model, onnx_path)
    predicted = predict(onnx_path, [VALIDATION_SEED_BASE + i for i in range(settings["validation"])],
                        args.threads, shape, balanced=True)
    threshold, min_mm3 = tune(predicted)
    validation = {**figures(predicted, threshold, min_mm3), "shape": list(shape), "spacing_mm": SPACING,
                  "first_seed": VALIDATION_SEED_BASE, "nodules": "n % 4 (balanced)",
                  "untuned (0.5, no minimum)": figures(predicted, 0.5, 0.0)}
    digest = sha256(onnx_path)
    (out / "manifest.toml").write_text(manifest(digest, threshold, min_mm3))
    write_json(out / "metrics.json", {
        "model": "ct-nodule-demo", "seed": args.seed, "smoke": args.smoke, "settings": settings,
        "network": {k: list(v) if isinstance(v, tuple) else v for k, v in NETWORK.items()},
        "patch": list(patch), "spacing_mm": SPACING, "train_wall_s": round(train_s, 1),
        "total_wall_s": round(time.perf_counter() - started, 1), "threads": args.threads,
        "onnx_bytes": onnx_path.stat().st_size, "onnx_sha256": digest, "validation": validation,
        "versions": versions(),
    })
    print(f"validation: {validation}")


if __name__ == "__main__":
    main()
