"""Procedural phantoms for the demonstration models (numpy + scipy; deterministic from a seed).

Nothing here is a real patient or a real disease: these are drawings with a known truth, so that the
node's demonstration models can be trained, validated and tested without any downloaded data.

- :func:`radiograph`: a frontal chest radiograph, bright = dense (as MONOCHROME2 display values), with a
  thorax, lungs, heart, mediastinum, diaphragm, ribs, clavicles and spine; a positive case carries a focal
  or patchy opacity in a lung. Size, exposure, noise and position vary.
- :func:`ct_chest`: a chest CT volume in Hounsfield units on an isotropic grid in RAS axis order
  ``(x: right, y: anterior, z: superior)``, with body, lungs, ribs, spine and vessels (distractors of the
  same density as the target), and 0-3 solid nodules (the target, returned as a mask).

Seeds: training draws from ``range(0, 1_000_000)``, validation from ``VALIDATION_SEED_BASE`` upwards and
tests from ``TEST_SEED_BASE`` upwards, so that the three never share a phantom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

VALIDATION_SEED_BASE = 10_000_000
TEST_SEED_BASE = 20_000_000


@dataclass(frozen=True)
class Radiograph:
    image: np.ndarray  # (rows, columns) float32, arbitrary exposure units, bright = dense
    finding: bool  # an opacity is present
    opacity: np.ndarray  # (rows, columns) bool: where the opacity is (empty when absent)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    d: np.ndarray = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    return d


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (d < 1), 0 outside, with a soft edge: ``d`` is a normalised squared radius."""
    out: np.ndarray = 1.0 / (1.0 + np.exp((np.sqrt(d) - 1.0) / edge))
    return out


def _band(x: np.ndarray, y: np.ndarray, x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
    """A soft band of ``width`` along the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    dist = np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))
    out: np.ndarray = np.exp(-0.5 * (dist / width) ** 2)
    return out


def radiograph(seed: int, shape: tuple[int, int] = (128, 128), finding: bool | None = None) -> Radiograph:
    """One frontal chest radiograph phantom; ``finding=None`` draws it with probability 1/2."""
    rng = np.random.default_rng([seed, 1])
    if finding is None:
        finding = bool(rng.random() < 0.5)
    rows, cols = shape
    y, x = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    s = rng.uniform(0.72, 1.0)  # patient size in the field
    cx, cy = rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)
    wide = rng.uniform(0.9, 1.1)
    x = (x - cx) / (s * wide)
    y = (y - cy) / s
    density = np.full(shape, 0.02)
    density += 0.45 * _soft(_ellipse(x, y, 0, 0.1, 0.95, 1.15), 0.03)  # soft tissue of the trunk
    arm = 0.25 * _soft(_ellipse(np.abs(x), y, 1.0, -0.1, 0.12, 0.9), 0.05)  # upper arms at the border
    density += arm
    dome = rng.uniform(0.35, 0.5)
    lungs = np.zeros(shape)
    for side in (-1, 1):
        lx = side * rng.uniform(0.38, 0.46)
        lung = _soft(_ellipse(x, y, lx, -0.08, rng.uniform(0.28, 0.34), rng.uniform(0.6, 0.7)), 0.04)
        diaphragm = 1.0 / (1.0 + np.exp((y - (dome + side * 0.04 - 0.35 * (x - lx) ** 2)) / 0.02))
        lungs = np.maximum(lungs, lung * diaphragm)
    density -= 0.32 * lungs
    heart = _soft(_ellipse(x, y, rng.uniform(0.06, 0.16), rng.uniform(0.14, 0.22),
                           rng.uniform(0.3, 0.38), rng.uniform(0.22, 0.3)), 0.05)
    density += 0.22 * heart
    density += 0.18 * _soft(_ellipse(x, y, 0.0, -0.35, 0.12, 0.6), 0.05)  # mediastinum
    density += 0.1 * _soft(_ellipse(x, y, 0.0, 0.0, 0.055, 1.3), 0.05)  # spine
    body = _soft(_ellipse(x, y, 0, 0.1, 0.95, 1.15), 0.03)
    ribs = np.zeros(shape)
    gap = rng.uniform(0.12, 0.15)
    for side in (-1, 1):
        for k in range(9):
            y0 = -0.72 + k * gap
            curve = y0 + 0.28 * (x * side - 0.05) ** 2 - 0.08 * (x * side)
            ribs += np.exp(-0.5 * ((y - curve) / 0.018) ** 2) * (x * side > 0.06) * (x * side < 0.88)
    density += 0.1 * np.clip(ribs, 0, 1) * body
    for side in (-1, 1):  # clavicles
        density += 0.14 * _band(x, y, side * 0.06, -0.72, side * 0.6, -0.8 + rng.uniform(-0.04, 0.04), 0.025)
    opacity = np.zeros(shape, dtype=bool)
    if finding:
        ys, xs = np.nonzero(lungs > 0.8)
        i = rng.integers(len(ys))
        oy, ox = y[ys[i], xs[i]], x[ys[i], xs[i]]
        if rng.random() < 0.5:  # focal: a nodule or small mass
            r = rng.uniform(0.07, 0.15)
            blob = _soft(_ellipse(x, y, ox, oy, r, r * rng.uniform(0.8, 1.2)), 0.15)
            amplitude = rng.uniform(0.25, 0.45)
        else:  # patchy: a cluster of soft blobs, confined to the lung
            blob = np.zeros(shape)
            for _ in range(rng.integers(4, 9)):
                r = rng.uniform(0.07, 0.13)
                bx, by = ox + rng.normal(0, 0.08), oy + rng.normal(0, 0.1)
                blob = np.maximum(blob, _soft(_ellipse(x, y, bx, by, r, r), 0.3))
            blob *= np.clip(lungs * 1.2, 0, 1)
            amplitude = rng.uniform(0.22, 0.4)
        density += amplitude * blob
        opacity = blob > 0.5
    density = ndimage.gaussian_filter(density, sigma=rng.uniform(0.5, 1.2) * rows / 128)
    exposure = rng.uniform(0.7, 1.4)
    gamma = rng.uniform(0.8, 1.25)
    image = 1000.0 * exposure * np.clip(density, 0, None) ** gamma + rng.uniform(0, 200)
    image += rng.normal(0, rng.uniform(5, 20), shape)  # quantum noise
    return Radiograph(image=image.astype(np.float32), finding=finding, opacity=opacity)


@dataclass(frozen=True)
class ChestCT:
    hu: np.ndarray  # (x, y, z) float32 Hounsfield units, RAS axis order
    nodules: np.ndarray  # (x, y, z) uint8: 1 inside a nodule
    count: int  # the number of nodules drawn
    spacing: float  # mm, isotropic


def ct_chest(seed: int, shape: tuple[int, int, int] = (64, 64, 64), spacing: float = 2.0,
             nodules: int | None = None, centre: tuple[float, float, float] | None = None,
             jitter: float = 0.0) -> ChestCT:
    """A chest CT phantom on a grid of ``shape`` voxels of ``spacing`` mm.

    The grid shows the part of the chest around ``centre`` (mm from the middle of the chest; ``None``
    draws a point in the lungs, so that small training grids see the lungs); nodules and vessels are
    placed inside the lungs that the grid shows. ``nodules=None`` draws 0-3 (0 with probability 1/4).
    ``jitter`` (mm) moves a drawn centre by up to that much per axis, so that small training patches also
    see what lies around the lungs (mediastinum, heart, chest wall) as larger grids do.
    """
    rng = np.random.default_rng([seed, 2])
    if nodules is None:
        nodules = int(rng.integers(0, 4))
    half_w, half_ap = rng.uniform(150, 175), rng.uniform(100, 120)  # body half-axes, mm
    lung_len = rng.uniform(100, 130)  # half-length of the lungs along z, mm
    if centre is None:
        centre = (rng.choice([-1, 1]) * rng.uniform(40, 90), rng.uniform(-30, 30), rng.uniform(-60, 60))
        if jitter:
            shift = np.random.default_rng([seed, 3]).uniform(-jitter, jitter, 3)
            centre = (centre[0] + shift[0], centre[1] + shift[1], centre[2] + shift[2])
    axes = [(np.arange(n) - (n - 1) / 2) * spacing + c for n, c in zip(shape, centre, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    hu = np.full(shape, -1000.0)
    body = ((x / half_w) ** 2 + (y / half_ap) ** 2) < 1
    hu[body] = rng.uniform(20, 50)  # soft tissue
    fat = body & (((x / (half_w - 15)) ** 2 + (y / (half_ap - 12)) ** 2) > 1)
    hu[fat] = -100.0
    zs = np.clip(1 - (z / lung_len) ** 2, 0, 1)
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        lx, rx, ry = side * rng.uniform(65, 80), rng.uniform(48, 58), rng.uniform(70, 85)
        lungs |= (((x - lx) / rx) ** 2 + ((y + 5) / ry) ** 2) < zs
    hu[lungs] = rng.uniform(-880, -820)
    heart = (((x - 20) / 55) ** 2 + ((y - 35) / 45) ** 2 + ((z + 40) / 60) ** 2) < 1
    hu[heart & body] = 40.0
    spine = (x**2 + ((y + half_ap - 35) / 1.0) ** 2) < 18**2
    hu[spine] = rng.uniform(250, 400)
    ring = ((x / (half_w - 8)) ** 2 + (y / (half_ap - 6)) ** 2)
    rib_phase = np.mod(z + rng.uniform(0, 25), 25)
    ribs = (ring > 0.82) & (ring < 0.95) & (rib_phase < 9) & (y > -half_ap + 20)
    hu[ribs & body] = rng.uniform(400, 700)
    vessel_hu = 40.0
    lung_idx = np.argwhere(lungs)
    grid = np.asarray(shape)

    def near(c: np.ndarray, reach: float) -> tuple[tuple[slice, ...], np.ndarray]:
        """The box of voxels within ``reach`` mm of index ``c``, and its voxel coordinates in mm."""
        lo = np.clip(np.floor(c - reach / spacing), 0, grid).astype(int)
        hi = np.clip(np.ceil(c + reach / spacing) + 1, 0, grid).astype(int)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        pts = np.stack([x[box], y[box], z[box]], axis=-1)
        return box, pts

    if len(lung_idx):
        for _ in range(int(rng.integers(12, 24))):  # vessels: tubes of blood density, the distractors
            i = lung_idx[rng.integers(len(lung_idx))]
            a = np.array([x[tuple(i)], y[tuple(i)], z[tuple(i)]])
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            length = rng.uniform(30, 90)
            b = a + direction * length
            radius = rng.uniform(0.8, 2.5)
            mid = i + direction * length / 2 / spacing
            box, pts = near(mid, length / 2 + radius + spacing)
            ab = b - a
            t = np.clip(((pts - a) @ ab) / float(ab @ ab), 0.0, 1.0)
            dist = np.linalg.norm(pts - (a + t[..., None] * ab), axis=-1)
            inside = (dist < radius) & lungs[box]
            hu[box][inside] = vessel_hu + rng.normal(0, 10)
    mask = np.zeros(shape, dtype=np.uint8)
    count = 0
    if len(lung_idx):
        for _ in range(nodules):
            i = lung_idx[rng.integers(len(lung_idx))]
            c = np.array([x[tuple(i)], y[tuple(i)], z[tuple(i)]])
            r = rng.uniform(4.0, 10.0)  # mm radius: 8-20 mm nodules
            stretch = rng.uniform(0.85, 1.15, size=3)
            box, pts = near(i.astype(float), r * 1.4 + spacing)
            d = np.sqrt((((pts - c) / stretch) ** 2).sum(axis=-1))
            angle = np.arctan2(pts[..., 1] - c[1], pts[..., 0] - c[0])
            wobble = 1 + 0.08 * np.sin(rng.uniform(2, 5) * angle + rng.uniform(0, 6))
            inside = d < r * wobble
            hu[box][inside] = rng.uniform(-20, 60)
            mask[box][inside] = 1
            count += 1
    hu = ndimage.gaussian_filter(hu, sigma=0.9 / spacing)  # partial volume
    hu += rng.normal(0, rng.uniform(10, 35), shape)
    return ChestCT(hu=hu.astype(np.float32), nodules=mask, count=count, spacing=spacing)
