"""Diagnostics, never a shipped model: does the radiograph task generalise better when the network learns
*where* the opacity is? (issue 26)

cxr-demo is a classifier trained on one label per image. The phantom generators know each opacity's pixels
(``Radiograph.opacity``), so a network can be taught to draw the opacity (dense supervision) and score an
image by its most confident pixels, the way nodule detectors are built. This trains a small MONAI 2D UNet
on the same training mix as ``train_cxr`` (phantoms.py and domain.py; the independent family is never
seen), with a per-pixel BCE + Dice loss and an image-level BCE on the mean of the 16 highest pixel logits,
and reports the image-level AUC on each family's test split beside the shipped classifier's.

    .venv/bin/python -m training.dense_cxr [--steps 1500] [--pool 3000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from dicomnode.fl.network import seed_everything
from dicomnode.inference.geometry import resample
from training.common import auc, families
from training.train_cxr import PHANTOM_SHAPE, SIZE, prepare, training_image

TOP = 16  # pixels whose mean logit scores the image
POSITIVE_WEIGHT = 10.0  # an opacity's pixels are about 1 % of an image's


def network() -> Any:
    from monai.networks.nets.unet import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=1, norm="batch")


def image_logit(pixel_logits: Any) -> Any:
    """The image's logit: the mean of its TOP highest pixel logits (a max that one noisy pixel cannot set)."""
    flat = pixel_logits.flatten(1)
    return flat.topk(TOP, dim=1).values.mean(dim=1)


def draw(seeds: range, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, m, y = [], [], []
    for s in seeds:
        phantom = training_image(s, rng)
        x.append(prepare(phantom.image))
        m.append(resample(phantom.opacity.astype(np.float32), SIZE) > 0.5)
        y.append(phantom.finding)
    return np.stack(x)[:, None], np.stack(m)[:, None].astype(np.float32), np.asarray(y, dtype=bool)


def fit(seed: int, steps: int, pool: int, batch: int, lr: float, threads: int) -> Any:
    import torch

    seed_everything(seed, threads)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    px, pm, py = draw(range(seed * 1_000_000, seed * 1_000_000 + pool), rng)
    print(f"{pool} training phantoms drawn in {time.perf_counter() - started:.1f} s", flush=True)
    model = network()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    bce = torch.nn.BCEWithLogitsLoss()
    pixel_bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(POSITIVE_WEIGHT))
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        pick = rng.integers(0, len(px), batch)
        x, m, y = px[pick].copy(), pm[pick].copy(), py[pick]
        flip = rng.random(batch) < 0.5
        x[flip], m[flip] = x[flip][..., ::-1], m[flip][..., ::-1]
        logits = model(torch.from_numpy(np.ascontiguousarray(x)))
        target = torch.from_numpy(np.ascontiguousarray(m))
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
        loss = pixel_bce(logits, target) + dice + bce(image_logit(logits), torch.from_numpy(y.astype(np.float32)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}/{steps}  loss {loss.item():.4f}  {time.perf_counter() - started:7.1f} s", flush=True)
    model.eval()
    return model


def evaluate(model: Any, n: int) -> dict[str, float]:
    import torch

    out = {}
    for family in families():
        seeds = [family.test + i for i in range(n)]
        phantoms = [family.radiograph(s, PHANTOM_SHAPE) for s in seeds]
        x = np.stack([prepare(p.image) for p in phantoms])[:, None]
        with torch.no_grad():
            logits = np.concatenate([image_logit(model(torch.from_numpy(x[k:k + 50]))).numpy()
                                     for k in range(0, n, 50)])
        out[family.name] = auc(logits, np.asarray([p.finding for p in phantoms], dtype=bool))
        print(f"{family.name}: AUC {out[family.name]:.3f} on {n} test radiographs", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--pool", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test", type=int, default=200)
    args = parser.parse_args()
    started = time.perf_counter()
    model = fit(args.seed, args.steps, args.pool, args.batch, args.lr, args.threads)
    trained = time.perf_counter() - started
    figures = evaluate(model, args.test)
    print(json.dumps({"auc": figures, "training_seconds": round(trained, 1), **vars(args)}))


if __name__ == "__main__":
    main()
