"""Inference: the node's warm deepbet model vs a cold torch-eager load-and-run, on the MNI152 volume."""

from __future__ import annotations

import statistics
import sys
import time

import torch
from pydicom import dcmread

from dicomnode.inference.registry import Registry
from dicomnode.inference.volume import build_volume
from tests.support.peers import REPO

SERIES = REPO.parent / "shared" / "data" / "mr_t1_brain_mni152"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    volume = build_volume([dcmread(p) for p in sorted(SERIES.iterdir())])
    registry = Registry(REPO / "models", "auto")
    manifest = registry.manifests["deepbet"]

    cold = []
    for _ in range(runs):
        started = time.perf_counter()
        model = type(registry.get("deepbet"))(manifest, "auto")  # fresh load, as a per-job script would
        model.predict(volume.array, volume.affine)
        cold.append(time.perf_counter() - started)
    warm_model = registry.get("deepbet")
    warm = []
    for _ in range(runs):
        started = time.perf_counter()
        warm_model.predict(volume.array, volume.affine)
        warm.append(time.perf_counter() - started)
    device = warm_model.device
    print(f"volume {'x'.join(map(str, volume.array.shape))}, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"cold load+run (torch eager, fresh TorchScript load): median {statistics.median(cold):.2f} s")
    print(f"warm model (dicomnode)                            : median {statistics.median(warm):.2f} s")
    print(f"ratio warm/cold: {statistics.median(warm) / statistics.median(cold):.2f}")


if __name__ == "__main__":
    main()
