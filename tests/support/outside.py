"""Inputs drawn from neither chest phantom family: what the models' distribution check must flag.

- :func:`abdomen_ct`: an abdominal CT phantom in HU, RAS ``(x, y, z)`` (no lungs): body with a fat rim and
  muscle, liver, spleen, kidneys, aorta and vena cava, a vertebra, bowel loops with fluid and gas.
- :func:`inverted`: a radiograph with its contrast inverted and left uncorrected (a MONOCHROME1 image read
  as MONOCHROME2).
Seeded; numpy and scipy only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def abdomen_ct(seed: int, shape: tuple[int, int, int] = (64, 64, 64), spacing: float = 2.0) -> np.ndarray:
    """An abdominal CT phantom (float32 HU) on ``shape`` voxels of ``spacing`` mm, centred in the abdomen."""
    rng = np.random.default_rng([seed, 26])
    axes = [(np.arange(n) - (n - 1) / 2) * spacing + rng.uniform(-15, 15) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    half_w, half_ap = rng.uniform(130, 170), rng.uniform(95, 125)
    hu = np.full(shape, -1000.0)
    body = (x / half_w) ** 2 + (y / half_ap) ** 2 < 1
    hu[body] = rng.uniform(-110, -80)  # fat
    inner = (x / (half_w - 20)) ** 2 + (y / (half_ap - 15)) ** 2 < 1
    hu[inner] = rng.uniform(40, 55)  # muscle and bowel wall
    organs = (
        ((x + 60) / 70) ** 2 + ((y - 10) / 60) ** 2 + (z / 90) ** 2 < 1,  # liver (patient's right: -x)
        ((x - 75) / 35) ** 2 + ((y + 20) / 40) ** 2 + ((z - 20) / 50) ** 2 < 1,  # spleen
    )
    hu[organs[0] & inner] = rng.uniform(55, 70)
    hu[organs[1] & inner] = rng.uniform(45, 55)
    for side in (-1, 1):  # kidneys
        kidney = ((x - side * 60) / 25) ** 2 + ((y + 45) / 30) ** 2 + ((z + 10) / 50) ** 2 < 1
        hu[kidney & inner] = rng.uniform(140, 190)
    for cx, r in ((15.0, 11.0), (-18.0, 10.0)):  # aorta, vena cava
        hu[((x - cx) ** 2 + (y + 40) ** 2 < r**2) & inner] = rng.uniform(150, 200)
    spine = x**2 + (y + half_ap - 40) ** 2 < 20**2
    hu[spine] = rng.uniform(250, 400)
    for _ in range(int(rng.integers(6, 12))):  # bowel loops: fluid, some with gas
        c = np.array([rng.uniform(-50, 60), rng.uniform(0, 70), rng.uniform(-60, 60)])
        r = rng.uniform(10, 20)
        loop = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r**2) & inner & ~organs[0]
        hu[loop] = rng.uniform(0, 30)
        if rng.random() < 0.5:
            hu[loop & (y > c[1] + 0.4 * r)] = -1000.0
    hu = ndimage.gaussian_filter(hu, 0.9 / spacing) + rng.normal(0, rng.uniform(10, 30), shape)
    out: np.ndarray = hu.astype(np.float32)
    return out


def inverted(image: np.ndarray) -> np.ndarray:
    """``image`` with its contrast inverted (bright = air), as an uncorrected MONOCHROME1 radiograph reads."""
    out: np.ndarray = (float(image.max()) + float(image.min()) - image).astype(np.float32)
    return out
