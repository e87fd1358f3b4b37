"""Simulated hospital sites for federated learning: chest CT phantoms written as a site's training export.

Each site draws its own distribution of phantoms (how many nodules per case, which seeds) and writes them
in the layout of ``dicomnode export training``: ``imagesTr/`` and ``labelsTr/`` NIfTI files (RAS, 2 mm)
and a MONAI ``datalist.json``. Everything is seeded: the same site is the same files every time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.common import DISCLAIMER
from training.phantoms import ct_chest


@dataclass(frozen=True)
class Site:
    """A site's phantom distribution: ``nodules`` per case are drawn from ``counts`` with ``weights``."""

    name: str
    seed: int
    counts: tuple[int, ...]
    weights: tuple[float, ...]


# three sites that differ: mostly single nodules, mostly several nodules, many cases without any
SITES = (Site("site-a", 101, (1, 2), (0.8, 0.2)), Site("site-b", 202, (2, 3), (0.5, 0.5)),
         Site("site-c", 303, (0, 1), (0.5, 0.5)))
POOLED_SEED = 909  # the pooled held-out set (bench/fl.py): seeds no site draws


def write_site(site: Site, folder: Path, cases: int, shape: tuple[int, int, int], spacing: float = 2.0) -> Path:
    """Write ``cases`` phantoms of ``site`` to ``folder`` in the export layout; returns the datalist path."""
    import nibabel as nib

    rng = np.random.default_rng(site.seed)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    entries = []
    for folder_name in ("imagesTr", "labelsTr"):
        (folder / folder_name).mkdir(parents=True, exist_ok=True)
    for n in range(cases):
        count = int(rng.choice(site.counts, p=site.weights))
        phantom = ct_chest(site.seed * 10_000 + n, shape, spacing, nodules=count)
        image, label = f"imagesTr/case-{n + 1:04d}.nii.gz", f"labelsTr/case-{n + 1:04d}.nii.gz"
        nib.save(nib.Nifti1Image(phantom.hu, affine), folder / image)  # type: ignore[no-untyped-call]
        nib.save(nib.Nifti1Image(phantom.nodules, affine), folder / label)  # type: ignore[no-untyped-call]
        entries.append({"image": image, "label": label, "pseudo_label": False, "label_source": "phantom"})
    datalist = {"description": f"{site.name}: {DISCLAIMER}", "numTraining": len(entries), "training": entries}
    path = folder / "datalist.json"
    path.write_text(json.dumps(datalist, indent=2))
    return path
