"""Train the chest-radiograph demonstration classifier (CheXNet-style DenseNet) on procedural phantoms.

    .venv/bin/python -m training.train_cxr [--out models/cxr-demo] [--seed 0] [--threads 2] [--smoke]

Writes ``model.onnx`` (opset 17, one file), ``manifest.toml`` (version 2) and ``metrics.json`` (AUC,
accuracy, sensitivity and specificity at the operating threshold on 200 fresh-seed phantoms, evaluated
with ONNX Runtime on the exported file; wall time; seed; package versions).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.fl.network import export_onnx, ort_session, seed_everything
from training.common import DISCLAIMER, arguments, auc, sha256, versions, write_json
from training.phantoms import VALIDATION_SEED_BASE, radiograph

SIZE = (64, 64)
THRESHOLD = 0.5
LABEL = "Opacity (synthetic-phantom demo; not clinical)"
NETWORK: dict[str, Any] = {"init_features": 16, "growth_rate": 8, "block_config": (2, 4, 6, 4), "bn_size": 4}
FULL: dict[str, Any] = {"steps": 600, "batch": 16, "lr": 1e-3, "validation": 200}
SMOKE: dict[str, Any] = {"steps": 3, "batch": 4, "lr": 2e-3, "validation": 8}


def zscore(image: np.ndarray) -> np.ndarray:
    """The manifest's ``normalise = "zscore"``: per image."""
    std = float(image.std())
    out: np.ndarray = ((image - float(image.mean())) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


def batch(seeds: range | list[int]) -> tuple[np.ndarray, np.ndarray]:
    phantoms = [radiograph(s, SIZE) for s in seeds]
    x = np.stack([zscore(p.image) for p in phantoms])[:, None]
    y = np.asarray([p.finding for p in phantoms], dtype=bool)
    return x, y


def network() -> Any:
    from monai.networks.nets.densenet import DenseNet

    return DenseNet(spatial_dims=2, in_channels=1, out_channels=1, **NETWORK)


def train(seed: int, steps: int, batch_size: int, lr: float, log: bool = True) -> Any:
    import torch

    model = network()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    model.train()
    running: list[float] = []
    started = time.perf_counter()
    for step in range(steps):
        # training phantoms: seed * 1e6 + step * batch + i, below the validation and test seed ranges
        x, y = batch(range(seed * 1_000_000 + step * batch_size, seed * 1_000_000 + (step + 1) * batch_size))
        flip = rng.random(batch_size) < 0.5  # mirror half of the images (heart on either side)
        x[flip] = x[flip][..., ::-1]
        logits = model(torch.from_numpy(np.ascontiguousarray(x)))[:, 0]
        loss = loss_fn(logits, torch.from_numpy(y.astype(np.float32)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        running.append(float(((logits.detach().numpy() > 0) == y).mean()))
        if log and (step % 20 == 0 or step == steps - 1):
            print(f"step {step:4d}/{steps}  loss {loss.item():.4f}  batch accuracy (last 20) "
                  f"{np.mean(running[-20:]):.3f}  {time.perf_counter() - started:7.1f} s", flush=True)
    model.eval()
    return model


def evaluate(onnx_path: Path, seeds: list[int], threads: int) -> dict[str, Any]:
    """Validation on phantoms of ``seeds`` through ONNX Runtime (the shipped file)."""
    run = ort_session(onnx_path, threads)
    scores, truth = [], []
    for start in range(0, len(seeds), 20):
        x, y = batch(seeds[start:start + 20])
        logits = run(x)[:, 0]
        scores.append(1.0 / (1.0 + np.exp(-logits.astype(np.float64))))
        truth.append(y)
    p, t = np.concatenate(scores), np.concatenate(truth)
    positive = p >= THRESHOLD
    return {
        "n": len(seeds), "positives": int(t.sum()), "auc": auc(p, t),
        "accuracy": float((positive == t).mean()),
        "sensitivity": float((positive & t).sum() / max(1, t.sum())),
        "specificity": float((~positive & ~t).sum() / max(1, (~t).sum())),
        "threshold": THRESHOLD, "first_seed": seeds[0],
    }


def manifest(onnx_sha: str) -> str:
    return f'''# Chest radiograph "opacity" classifier: a {DISCLAIMER}.
# Written by training/train_cxr.py (see training/README.md); manifest version 2 (models/README.md).
manifest_version = 2
id = "cxr-demo"
version = "1.0.0"
name = "Chest radiograph opacity demo (DenseNet; {DISCLAIMER})"
task = "classification"
backend = "onnx"
framework = "onnx"
licence = "Apache-2.0"
series_number_base = 9100
intended_use = """
{DISCLAIMER.capitalize()}. A small CheXNet-style DenseNet (MONAI) that scores a frontal chest
radiograph (CR or DX) for a focal or patchy opacity, trained only on procedural phantoms drawn by
training/phantoms.py. It demonstrates the node's classification path (SR and occlusion map); its output
says nothing about a real patient.
"""

[[files]]
name = "model.onnx"
sha256 = "{onnx_sha}"

[input]
modalities = ["CR", "DX"]
dimensions = 2
size = [{SIZE[0]}, {SIZE[1]}]
fit = "resize"

[input.intensity]
voi_lut = false  # trained on linear exposure values; per-image z-score takes out exposure and offset
invert_monochrome1 = true
normalise = "zscore"

[output]
activation = "sigmoid"  # the network returns one logit
explanation = {{ patch = 16, stride = 8 }}

[[output.classes]]
index = 0
label = "{LABEL}"
# A local code (scheme 99DCMNODE): the finding is a phantom's drawn opacity, not a clinical concept.
finding = {{ scheme = "99DCMNODE", value = "DEMO-CXR-OPACITY", meaning = "{LABEL}" }}
threshold = {THRESHOLD}

[default_rule]
name = "cxr-demo"
match = {{ Modality = "^(CR|DX)$", BodyPartExamined = "CHEST|THORAX" }}
'''


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "models/cxr-demo")
    settings = SMOKE if args.smoke else FULL
    seed_everything(args.seed, args.threads)
    started = time.perf_counter()
    model = train(args.seed, settings["steps"], settings["batch"], settings["lr"])
    train_s = time.perf_counter() - started
    import torch

    out: Path = args.out
    onnx_path = out / "model.onnx"
    export_onnx(model, torch.zeros(1, 1, *SIZE), onnx_path, "image", "logits", {0: "batch"})
    validation = evaluate(onnx_path, [VALIDATION_SEED_BASE + i for i in range(settings["validation"])], args.threads)
    digest = sha256(onnx_path)
    (out / "manifest.toml").write_text(manifest(digest))
    write_json(out / "metrics.json", {
        "model": "cxr-demo", "seed": args.seed, "smoke": args.smoke, "settings": settings, "network": NETWORK,
        "input": list(SIZE), "train_wall_s": round(train_s, 1),
        "total_wall_s": round(time.perf_counter() - started, 1), "threads": args.threads,
        "onnx_bytes": onnx_path.stat().st_size, "onnx_sha256": digest, "validation": validation,
        "versions": versions(),
    })
    print(f"validation: {validation}")


if __name__ == "__main__":
    main()
