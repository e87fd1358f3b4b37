"""A second, independent family of procedural chest phantoms: a frontal radiograph and a chest CT.

This family is kept out of training. It was written from the output contract alone (the two dataclasses and
the two generator signatures below), without reading ``training/phantoms.py`` or the training scripts, so that
a model which has merely learnt the quirks of the first family's drawing code does not pass a check made on
this one. The anatomy is drawn a different way: the radiograph is a projection of path lengths through
analytic bodies (soft tissue, air, bone, metal) exposed through a noisy detector and a display curve; the
CT is a labelled set of implicit surfaces in millimetres, cut by a field of view that sits somewhere in the
chest, with vessel trees grown branch by branch and turned into tubes by a distance transform.

Everything here is synthetic: no patient data went into it, it is a research demonstration, and it is not
meant for, nor validated for, clinical use.

Determinism: each generator draws from ``numpy.random.default_rng([seed, stream])`` sub-streams, so one seed
gives the same array on every machine with the same numpy, and the anatomy of a seed does not depend on
whether a finding is asked for (``radiograph(s, finding=True)`` and ``radiograph(s, finding=False)`` show the
same patient with the same noise; only the opacity differs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = [
    "TEST_SEED_BASE",
    "VALIDATION_SEED_BASE",
    "ChestCT",
    "Radiograph",
    "ct_chest",
    "radiograph",
    "radiograph_lungs",
]

Array = npt.NDArray[Any]

VALIDATION_SEED_BASE = 30_000_000
"""Seeds ``VALIDATION_SEED_BASE + i`` are this family's validation cases."""
TEST_SEED_BASE = 40_000_000
"""Seeds ``TEST_SEED_BASE + i`` are this family's test cases."""

# Sub-streams of one seed: the patient and the acquisition, the finding, the noise.
_ANATOMY, _FINDING, _NOISE = 1, 2, 3


def _rng(seed: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, stream])


def _sigmoid(x: Array | float) -> Any:
    return 0.5 + 0.5 * np.tanh(0.5 * np.asarray(x))


def _chord(r2: Array) -> Array:
    """Path length through a unit ellipsoid (or across a unit ellipse) at squared normalised radius ``r2``."""
    result: Array = np.sqrt(np.clip(1.0 - r2, 0.0, None))
    return result


# --------------------------------------------------------------------------------------------------------------
# Radiograph
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Radiograph:
    """A frontal (PA) chest radiograph.

    ``image`` is (rows, columns) float32 in arbitrary exposure units, bright = dense (MONOCHROME2 display sense);
    ``finding`` says whether an opacity is present and ``opacity`` (rows, columns) bool says where (all False
    when absent). The patient's left is on the image's right.
    """

    image: Array
    finding: bool
    opacity: Array


# Linear attenuation per anatomy unit (one unit is half the rib cage's width, about 15 cm): soft tissue, bone,
# metal. Only their ratios matter; the exposure and the display curve are drawn per image.
_MU_TISSUE, _MU_BONE, _MU_METAL = 3.0, 7.5, 60.0


@dataclass(frozen=True)
class _Frame:
    """Anatomy coordinates of every pixel: X across (image right = patient left = +), Y down from the apices."""

    X: Array
    Y: Array
    scale: float  # pixels per anatomy unit
    centre: tuple[float, float]  # (X, Y) at the image centre
    angle: float  # in-plane rotation, radians
    shape: tuple[int, int]

    def to_pixels(self, X: Array, Y: Array) -> tuple[Array, Array]:
        """(rows, columns), float, of anatomy points."""
        dx, dy = X - self.centre[0], Y - self.centre[1]
        c, s = math.cos(self.angle), math.sin(self.angle)
        col = (c * dx - s * dy) * self.scale + (self.shape[1] - 1) / 2
        row = (s * dx + c * dy) * self.scale + (self.shape[0] - 1) / 2
        return row, col


@dataclass(frozen=True)
class _Thorax:
    """One patient's radiographic anatomy, in anatomy units."""

    body_width: float  # half-width of the chest's soft tissue (the rib cage is 1.0)
    depth: float  # antero-posterior thickness at the centre
    apex: tuple[float, float]  # apex height of (patient right, patient left) = (image left, image right) lung
    dome: tuple[float, float]  # diaphragm dome heights, right and left
    lung_width: tuple[float, float]  # lateral extent of each lung
    mediastinum: float  # half-width of the upper mediastinum
    heart: tuple[float, float, float, float, float]  # centre X, centre Y, half-axes, rotation
    spine_x: float  # the spinous line; off-centre when the patient is rotated
    rib_step: float
    female: bool
    gastric_bubble: bool


def _frame(shape: tuple[int, int], rng: np.random.Generator) -> _Frame:
    rows, cols = shape
    span = rng.uniform(2.3, 3.1)  # anatomy units seen from top to bottom: patient size against detector size
    scale = min(rows, cols * 1.1) / span
    centre = (rng.normal(0.0, 0.06), rng.uniform(0.75, 0.95))
    angle = math.radians(rng.normal(0.0, 2.5))
    r = np.arange(rows, dtype=np.float32)[:, None] - (rows - 1) / 2
    c = np.arange(cols, dtype=np.float32)[None, :] - (cols - 1) / 2
    dx, dy = c / scale, r / scale
    ca, sa = math.cos(angle), math.sin(angle)
    X = (centre[0] + ca * dx + sa * dy).astype(np.float32)
    Y = (centre[1] - sa * dx + ca * dy).astype(np.float32)
    return _Frame(X=X, Y=Y, scale=scale, centre=centre, angle=angle, shape=shape)


def _thorax(rng: np.random.Generator) -> _Thorax:
    dome_r = rng.uniform(1.4, 1.7)
    heart_size = rng.uniform(0.85, 1.2)
    return _Thorax(
        body_width=rng.uniform(1.06, 1.25),
        depth=rng.uniform(0.85, 1.25),
        apex=(rng.normal(0.0, 0.03), rng.normal(0.0, 0.03)),
        dome=(dome_r, dome_r + rng.uniform(0.02, 0.1)),
        lung_width=(rng.uniform(0.9, 0.96), rng.uniform(0.9, 0.96)),
        mediastinum=rng.uniform(0.09, 0.14),
        heart=(rng.uniform(0.08, 0.18), dome_r - 0.17 * heart_size, 0.45 * heart_size, 0.33 * heart_size,
               math.radians(rng.uniform(-30, -15))),
        spine_x=rng.normal(0.0, 0.03),
        rib_step=(dome_r + 0.1) / 10.5,
        female=bool(rng.random() < 0.45),
        gastric_bubble=bool(rng.random() < 0.6),
    )


def _segment_distance(X: Array, Y: Array, points: Array) -> Array:
    """Distance from every pixel to the polyline through ``points`` (n, 2), in anatomy units."""
    best = np.full(X.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in pairwise(points):
        ex, ey = x1 - x0, y1 - y0
        length2 = ex * ex + ey * ey + 1e-12
        t = np.clip(((X - x0) * ex + (Y - y0) * ey) / length2, 0.0, 1.0)
        d2 = (X - x0 - t * ex) ** 2 + (Y - y0 - t * ey) ** 2
        np.minimum(best, d2, out=best)
    result: Array = np.sqrt(best)
    return result


def _bezier(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], n: int = 14) -> Array:
    t = np.linspace(0.0, 1.0, n)[:, None]
    a, b, c = np.asarray(p0), np.asarray(p1), np.asarray(p2)
    result: Array = (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c
    return result


def _soft_tissue(f: _Frame, t: _Thorax) -> Array:
    """Path length through the body's soft tissue: neck, shoulders, chest, upper abdomen."""
    Y = f.Y
    width = (0.3 + (t.body_width + 0.2 - 0.3) * _sigmoid((Y + 0.28) / 0.05)
             - 0.2 * _sigmoid((Y - 0.2) / 0.12))
    depth = t.depth * (0.55 + 0.45 * _sigmoid((Y + 0.3) / 0.07))
    across = ((f.X - 0.3 * t.spine_x) / width) ** 2
    tissue: Array = depth * np.clip(1.0 - across**2, 0.0, None) ** 0.25  # a boxy torso, not a cylinder
    if t.female:
        for side in (-1.0, 1.0):
            cx, cy = side * 0.66 + t.spine_x, t.dome[0] - 0.02
            tissue = tissue + 0.14 * _chord(((f.X - cx) / 0.36) ** 2 + ((Y - cy) / 0.3) ** 2)
    return tissue


def _lung_air(f: _Frame, t: _Thorax) -> Array:
    """Path length through the air of both lungs, with the heart and the aortic knob taken out of it."""
    X, Y = f.X, f.Y
    air = np.zeros_like(X)
    for index, side in enumerate((-1.0, 1.0)):
        xs = side * (X - t.spine_x)
        depth = Y - t.apex[index]
        down = np.clip(depth, 0.0, None)
        centre = 0.42
        lateral = centre + (t.lung_width[index] - centre) * np.sqrt(1.0 - np.exp(-down / 0.22)) + 0.03 * down
        medial = centre - (centre - t.mediastinum) * np.sqrt(1.0 - np.exp(-down / 0.16))
        frac = (xs - medial) / np.maximum(lateral - medial, 1e-3)
        # thickest laterally-behind, thin next to the mediastinum
        across = np.where(frac < 0.62, ((frac - 0.62) / 0.62) ** 2, ((frac - 0.62) / 0.38) ** 2)
        dome = t.dome[index] + 0.2 * ((xs - 0.5) / 0.5) ** 2
        vertical = _sigmoid((dome - Y) * f.scale / 1.2) * np.sqrt(np.clip(depth / 0.3, 0.0, 1.0))
        # the posterior recesses: a little air below the dome
        recess = 0.1 * _sigmoid((dome + 0.1 - Y) / 0.025) * (1.0 - vertical)
        air = air + 0.8 * t.depth * _chord(across) * (0.7 + 0.3 * np.clip(down / 1.4, 0.0, 1.0)) * (vertical + recess)
    hx, hy, ha, hb, hr = t.heart
    u = (X - hx) * math.cos(hr) + (Y - hy) * math.sin(hr)
    v = -(X - hx) * math.sin(hr) + (Y - hy) * math.cos(hr)
    heart = 0.95 * t.depth * np.sqrt(_chord((u / ha) ** 2 + (v / hb) ** 2))
    knob = 0.35 * t.depth * _chord(((X - 0.17 - t.spine_x) / 0.085) ** 2 + ((Y - 0.5) / 0.08) ** 2)
    vascular = 0.45 * t.depth * _chord(((X - t.spine_x - 0.03) / 0.2) ** 2 + ((Y - 0.75) / 0.55) ** 2)
    result: Array = np.clip(air - heart - knob - vascular, 0.0, None)
    return result


def _airways(f: _Frame, t: _Thorax) -> Array:
    """Air path length in the trachea and the main bronchi."""
    carina = (t.spine_x + 0.01, 0.55)
    trachea = np.array([(t.spine_x, -0.8), (t.spine_x + 0.01, 0.2), carina])
    right = np.array([carina, (carina[0] - 0.14, carina[1] + 0.2)])
    left = np.array([carina, (carina[0] + 0.18, carina[1] + 0.14)])
    air = 0.14 * t.depth * _chord((_segment_distance(f.X, f.Y, trachea) / 0.055) ** 2)
    for bronchus in (right, left):
        air = np.maximum(air, 0.1 * t.depth * _chord((_segment_distance(f.X, f.Y, bronchus) / 0.04) ** 2))
    if t.gastric_bubble:
        air = air + 0.22 * t.depth * _chord(((f.X - 0.45) / 0.13) ** 2 + ((f.Y - t.dome[1] - 0.13) / 0.07) ** 2)
    result: Array = air
    return result


def _rib_profile(d: Array) -> Array:
    """Projected bone across a rib or clavicle, ``d`` = offset / half-width: a marrow chord plus bright cortices."""
    result: Array = 0.5 * _chord(d * d) + 0.5 * np.exp(-(((np.abs(d) - 0.85) / 0.14) ** 2))
    return result


def _bones(f: _Frame, t: _Thorax) -> Array:
    """Bone path length: posterior and anterior ribs, clavicles, spine, humeral heads."""
    X, Y = f.X, f.Y
    bone = np.zeros_like(X)
    k = np.arange(10, dtype=np.float32)[:, None, None]
    y0 = -0.1 + k * t.rib_step
    for index, side in enumerate((-1.0, 1.0)):
        xs = (side * (X - t.spine_x))[None]
        Yk = Y[None]
        outer = 0.42 + (t.lung_width[index] + 0.05 - 0.42) * np.sqrt(1.0 - np.exp(-np.clip(y0 + 0.1, 0, None) / 0.2))
        tt = (xs - 0.06) / (outer - 0.06)
        centre = y0 - 0.14 * tt + (0.42 + 0.03 * k) * np.clip(tt, 0.0, None) ** 2.2
        half = 0.032 + 0.002 * k
        posterior = _rib_profile((Yk - centre) / half) * (np.abs(Yk - centre) < half)
        posterior = posterior * _sigmoid(tt * 60) * _sigmoid((1.02 - tt) * 40)
        # the anterior arcs run down and in from the lateral wall and fade at the costal cartilage
        lateral_y = y0 + 0.2 + 0.02 * k
        front = lateral_y + 0.45 * np.clip(1.0 - tt, 0.0, None) ** 1.2
        anterior = _rib_profile((Yk - front) / (half * 1.2)) * (np.abs(Yk - front) < half * 1.2)
        anterior = anterior * _sigmoid((tt - 0.45) * 30) * _sigmoid((1.0 - tt) * 40) * (k < 7)
        bone = bone + 0.06 * (posterior.sum(axis=0) + 0.45 * anterior.sum(axis=0))
        # clavicle: an S from the sternal notch up and out to the shoulder
        a = np.clip((xs[0] - 0.08) / 0.72, 0.0, 1.0)
        clav = 0.2 + t.apex[index] - 0.28 * a + 0.03 * np.sin(2 * math.pi * a)
        dc = (Y - clav) / (0.04 - 0.008 * a)
        bone = bone + 0.08 * _rib_profile(dc) * (np.abs(dc) < 1) * _sigmoid((xs[0] - 0.08) * 60) * (xs[0] < 0.82)
        # humeral head
        bone = bone + 0.12 * _chord(((xs[0] - 1.2) / 0.15) ** 2 + ((Y + 0.13) / 0.15) ** 2)
        shaft = np.abs(xs[0] - 1.26 - 0.1 * np.clip(Y + 0.13, 0.0, None)) / 0.08
        bone = bone + 0.1 * _rib_profile(shaft) * (shaft < 1) * (Y > -0.13)
    # spine: vertebral bodies with end plates, pedicles as ovals
    sx = X - t.spine_x
    level = (Y + 0.9) / 0.135
    phase = level - np.floor(level)
    body = _chord((sx / 0.1) ** 2) * (0.55 + 0.45 * np.exp(-((np.abs(sx) - 0.085) / 0.02) ** 2))
    disc = 1.0 - 0.6 * np.exp(-((phase - 0.5) / 0.07) ** 2)
    bone = bone + 0.05 * body * disc
    centre_y = np.floor(level) * 0.135 - 0.9 + 0.05
    for side in (-1.0, 1.0):
        ped = ((sx - side * 0.068) / 0.022) ** 2 + ((Y - centre_y) / 0.03) ** 2
        bone = bone + 0.03 * np.exp(-(((np.sqrt(ped) - 0.9) / 0.25) ** 2))
    result: Array = bone
    return result


def _branches(rng: np.random.Generator, root: tuple[float, float], heading: float, width: float,
              levels: int) -> tuple[Array, Array, Array]:
    """A 2-D branching tree grown level by level: segment starts (n, 2), ends (n, 2), radii (n,)."""
    pos = np.array([root], dtype=np.float64)
    ang = np.array([heading])
    rad = np.array([width])
    starts, ends, radii = [], [], []
    for _ in range(levels):
        length = rad * rng.uniform(5.0, 8.0, rad.shape) + 0.04
        end = pos + length[:, None] * np.stack([np.cos(ang), np.sin(ang)], axis=1)
        starts.append(pos)
        ends.append(end)
        radii.append(rad)
        spread = rng.uniform(0.25, 0.6, ang.shape)
        pos = np.concatenate([end, end])
        ang = np.concatenate([ang + spread, ang - spread * rng.uniform(0.6, 1.2, ang.shape)])
        rad = np.concatenate([rad * rng.uniform(0.7, 0.85, rad.shape), rad * rng.uniform(0.55, 0.75, rad.shape)])
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(radii)


def _vessels(f: _Frame, t: _Thorax, rng: np.random.Generator) -> Array:
    """Path length of the pulmonary vessels: trees from the hila, splatted level by level and blurred to width."""
    levels = 6
    deposits = np.zeros((levels, *f.shape), dtype=np.float64)
    for side, hilum_y in ((-1.0, 0.82), (1.0, 0.74)):
        for heading in (-1.1, -0.1, 0.7):  # up, out, down (angles in the image, x outwards)
            root = (t.spine_x + side * 0.2, hilum_y)
            angle = heading if side > 0 else math.pi - heading
            starts, ends, radii = _branches(rng, root, angle, 0.03, levels)
            level = np.repeat(np.arange(levels), 2 ** np.arange(levels))
            n = max(4, math.ceil(float(np.linalg.norm(ends - starts, axis=1).max()) * f.scale))
            samples = (np.arange(n) + 0.5)[:, None, None] / n
            points = starts[None] + samples * (ends - starts)[None]  # (n, segments, 2)
            step = np.linalg.norm(ends - starts, axis=1) / n
            volume = np.broadcast_to(math.pi * radii**2 * step, points.shape[:2])
            row, col = f.to_pixels(points[..., 0], points[..., 1])
            r, c = np.rint(row).astype(int).ravel(), np.rint(col).astype(int).ravel()
            lv = np.broadcast_to(level, points.shape[:2]).ravel()
            ok = (r >= 0) & (r < f.shape[0]) & (c >= 0) & (c < f.shape[1])
            np.add.at(deposits, (lv[ok], r[ok], c[ok]), volume.ravel()[ok])
    # volume per pixel area = projected path length; a blur as wide as the vessel keeps the integral
    total = np.zeros(f.shape, dtype=np.float64)
    for index in range(levels):
        width = 0.03 * 0.72**index * f.scale * 0.7
        total += ndimage.gaussian_filter(deposits[index] * f.scale**2, max(0.7, width))
    result: Array = total.astype(np.float32)
    return result


def _devices(f: _Frame, rng: np.random.Generator) -> Array:
    """Metal and plastic path length: ECG electrodes with their leads, a line or a tube, a side marker."""
    X, Y = f.X, f.Y
    thin = 0.7 / f.scale  # never narrower than a pixel
    metal = np.zeros_like(X)
    for _ in range(int(rng.choice([0, 0, 1, 2, 3, 4]))):
        cx, cy = rng.uniform(-0.9, 0.9), rng.uniform(-0.2, 1.6)
        r = max(rng.uniform(0.03, 0.05), 2.0 / f.scale)
        d = np.hypot(X - cx, Y - cy)
        metal = metal + 0.004 * np.exp(-(((d - r) / max(0.006, thin)) ** 2)) + 0.006 * (d < 0.3 * r)
        lead = _bezier((cx, cy), (cx + rng.normal(0, 0.4), cy + rng.normal(0, 0.4)),
                       (rng.choice([-1.6, 1.6]), rng.uniform(-0.5, 2.2)))
        metal = metal + 0.0015 * np.exp(-((_segment_distance(X, Y, lead) / max(0.005, thin)) ** 2))
    kind = rng.choice(["none", "none", "line", "tube", "nasogastric"])
    if kind == "line":  # a central venous line from the right side into the superior vena cava
        path = _bezier((-0.75, -0.35), (-0.2, -0.1), (-0.06, rng.uniform(0.55, 0.85)))
    elif kind == "tube":  # an endotracheal tube ending above the carina
        path = _bezier((0.0, -1.0), (0.01, -0.2), (0.0, rng.uniform(0.2, 0.45)))
    elif kind == "nasogastric":
        path = _bezier((0.02, -1.0), (-0.02, 0.9), (0.45, rng.uniform(1.75, 1.95)))
    if kind != "none":
        d = _segment_distance(X, Y, path)
        metal = metal + 0.0025 * np.exp(-((d / max(0.006, thin)) ** 2))
    if rng.random() < 0.5:  # a lead side marker in an upper corner
        mx, my = rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.1), rng.uniform(-0.5, -0.2)
        bar = (np.abs(X - mx) < 0.012) & (np.abs(Y - my) < 0.06)
        foot = (np.abs(Y - my - 0.05) < 0.012) & (X - mx > -0.012) & (X - mx < 0.05)
        metal = metal + 0.01 * (bar | foot)
    result: Array = metal
    return result


def _opacity(f: _Frame, lungs: Array, air: Array, rng: np.random.Generator) -> tuple[Array, Array]:
    """A focal (nodule, mass) or patchy (consolidation) opacity in a lung: added path length and its mask."""
    X, Y = f.X, f.Y
    deep = np.flatnonzero((air > 0.5 * air.max()).ravel())
    for _ in range(50):
        cy, cx = divmod(int(rng.choice(deep)), f.shape[1])
        px, py = float(X[cy, cx]), float(Y[cy, cx])
        if rng.random() < 0.55:  # focal: round, lobulated, sharp
            radius = math.exp(rng.uniform(math.log(0.025), math.log(0.16)))
            density = rng.uniform(0.35, 1.0)
            theta = np.arctan2(Y - py, X - px)
            lobes = (1.0 + 0.08 * np.sin(3 * theta + rng.uniform(0, 6.3))
                     + 0.05 * np.sin(5 * theta + rng.uniform(0, 6.3)))
            r2 = ((X - px) ** 2 + (Y - py) ** 2) / (radius * lobes) ** 2
            path = 2 * radius * density * _chord(r2)
            added = np.minimum(path, air)
            mask = (r2 < 0.85) & lungs
        else:  # patchy: soft-edged, irregular, filling part of the air
            ra, rb = rng.uniform(0.12, 0.35), rng.uniform(0.1, 0.25)
            turn = rng.uniform(0, math.pi)
            u = ((X - px) * math.cos(turn) + (Y - py) * math.sin(turn)) / ra
            v = (-(X - px) * math.sin(turn) + (Y - py) * math.cos(turn)) / rb
            field = ndimage.gaussian_filter(rng.standard_normal(f.shape), 0.04 * f.scale)
            field = field / (field.std() + 1e-9)
            envelope = u * u + v * v
            filling = _sigmoid((0.8 * field + 2.2 * (1.0 - envelope) - 0.9) / 0.35) * np.clip(2.0 - envelope, 0.0, 1.0)
            added = rng.uniform(0.3, 0.85) * air * filling
            mask = (filling > 0.5) & lungs
        if mask.sum() >= 3:
            return added.astype(np.float32), mask
    raise RuntimeError("no opacity fitted the lungs")  # pragma: no cover - 50 draws in a lung field


def _expose(attenuation: Array, rng: np.random.Generator, noise: np.random.Generator) -> Array:
    """Detector and display: transmission, blur, quantum and electronic noise, log, window and a transfer curve."""
    transmitted = np.exp(-attenuation)
    transmitted = ndimage.gaussian_filter(transmitted, rng.uniform(0.3, 1.3))
    photons = math.exp(rng.uniform(math.log(600.0), math.log(40_000.0)))  # counts per pixel behind no patient
    quantum = noise.standard_normal(attenuation.shape)
    electronic = noise.standard_normal(attenuation.shape)
    counts = photons * transmitted
    counts = np.maximum(counts + np.sqrt(counts) * quantum, 0.5)
    line_integral = -np.log(counts / photons)
    low, high = rng.uniform(0.0, 0.4), rng.uniform(4.0, 6.5)
    v = np.clip((line_integral - low) / (high - low), 0.0, 1.2)
    if rng.random() < 0.5:
        shown = v ** rng.uniform(0.55, 1.5)
    else:  # a film-like S curve
        mid, slope = rng.uniform(0.35, 0.6), rng.uniform(4.0, 9.0)
        shown = (_sigmoid((v - mid) * slope) - _sigmoid(-mid * slope)) / (_sigmoid((1 - mid) * slope)
                                                                      - _sigmoid(-mid * slope))
    gain, offset = rng.uniform(800.0, 4000.0), rng.uniform(0.0, 300.0)
    image: Array = offset + gain * shown + gain * rng.uniform(0.0, 0.01) * electronic
    return image


def _draw(seed: int, shape: tuple[int, int]) -> tuple[_Frame, Array, Array, np.random.Generator]:
    """The patient without any finding: frame, attenuation, lung air, and the acquisition stream that follows."""
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be (rows, columns), each >= 16; got {shape}")
    rng = _rng(seed, _ANATOMY)
    f = _frame(shape, rng)
    t = _thorax(rng)
    air = _lung_air(f, t)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 0.025 * f.scale)
    texture = texture / (texture.std() + 1e-9)
    attenuation = (_MU_TISSUE * (_soft_tissue(f, t) - air - _airways(f, t) + _vessels(f, t, rng))
                   + _MU_TISSUE * 0.03 * texture * (air > 0.05) + _MU_BONE * _bones(f, t)
                   + _MU_METAL * _devices(f, rng))
    if rng.random() < 0.3:  # collimation: an unexposed band on one or two edges shows white
        edge = rng.uniform(0.02, 0.08)
        rows, cols = shape
        band = np.zeros(shape, dtype=bool)
        band[:, : int(edge * cols)] = True
        if rng.random() < 0.5:
            band[:, cols - int(edge * cols):] = True
        if rng.random() < 0.5:
            band[: int(edge * rows)] = True
        attenuation = np.where(band, attenuation + 8.0, attenuation)
    return f, attenuation.astype(np.float32), air, rng


def _lung_field(air: Array) -> Array:
    result: Array = air > 0.08 * air.max()
    return result


def radiograph(seed: int, shape: tuple[int, int] = (128, 128), finding: bool | None = None,
               noise: int | None = None) -> Radiograph:
    """Draw a frontal chest radiograph for ``seed``.

    ``finding`` None lets the seed decide (about half are positive). The anatomy, acquisition and noise of a
    seed are the same whether or not a finding is drawn, so a seed gives a matched positive/negative pair.
    The anatomy is drawn at a scale, position and rotation of its own, whatever ``shape`` is. ``noise`` (added
    after the family was written, for ``training/ceiling.py``) draws the same patient and acquisition with
    another noise realisation.
    """
    f, attenuation, air, acquisition = _draw(seed, shape)
    chance = _rng(seed, _FINDING)
    coin = bool(chance.random() < 0.5)  # drawn always, so the opacity of a seed is the same however it is asked
    positive = coin if finding is None else bool(finding)
    lungs = _lung_field(air)
    mask = np.zeros(shape, dtype=bool)
    if positive:
        added, mask = _opacity(f, lungs, air, chance)
        attenuation = attenuation + _MU_TISSUE * added
    image = _expose(attenuation, acquisition, _rng(seed if noise is None else noise, _NOISE))
    return Radiograph(image=image.astype(np.float32), finding=positive, opacity=mask)


def radiograph_lungs(seed: int, shape: tuple[int, int] = (128, 128)) -> Array:
    """The lung fields (rows, columns) bool that ``radiograph(seed, shape)`` drew its opacity in; for checks."""
    _, _, air, _ = _draw(seed, shape)
    return _lung_field(air)


# --------------------------------------------------------------------------------------------------------------
# Chest CT
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChestCT:
    """A chest CT volume around the lungs.

    ``hu`` is (x, y, z) float32 Hounsfield units in RAS order (+x towards the patient's right, +y anterior,
    +z superior); ``nodules`` is (x, y, z) uint8, 1 inside a nodule; ``count`` is how many nodules were drawn;
    ``spacing`` is the isotropic voxel size in mm.
    """

    hu: Array
    nodules: Array
    count: int
    spacing: float


_AIR, _FAT, _MUSCLE, _BLOOD, _LIVER = -1000.0, -100.0, 50.0, 40.0, 58.0


@dataclass(frozen=True)
class _Chest:
    """One patient's CT anatomy in body millimetres: x right, y anterior, z superior; origin mid-thorax, carina."""

    body: tuple[float, float]  # outer half-axes (x, y)
    fat: float
    muscle: float
    wall: tuple[float, float]  # pleural (inner chest wall) half-axes
    apex: tuple[float, float]  # lung apex height of the right, left lung
    dome: tuple[float, float]  # diaphragm dome height, right, left
    heart: tuple[float, float, float, float, float, float, float]  # centre xyz, half-axes xyz, turn about z
    spine_y: float  # vertebral body centre
    rib_period: float
    rib_drop: float
    rib_phase: float
    lung_density: float


def _chest(rng: np.random.Generator) -> _Chest:
    bx = rng.uniform(135.0, 190.0)
    by = bx * rng.uniform(0.6, 0.78)
    fat = rng.uniform(6.0, 32.0)
    muscle = rng.uniform(8.0, 16.0)
    wx, wy = bx - fat - muscle - 10.0, by - fat - muscle * 0.8 - 10.0
    dome_r = -rng.uniform(100.0, 150.0)
    ha, hb, hc = rng.uniform(50.0, 66.0), rng.uniform(38.0, 48.0), rng.uniform(44.0, 56.0)
    return _Chest(
        body=(bx, by), fat=fat, muscle=muscle, wall=(wx, wy),
        apex=(rng.uniform(95.0, 130.0), rng.uniform(95.0, 130.0)),
        dome=(dome_r, dome_r - rng.uniform(5.0, 22.0)),
        heart=(-rng.uniform(12.0, 30.0), 0.28 * wy, dome_r + 0.55 * hc, ha, hb, hc, math.radians(rng.uniform(25, 45))),
        spine_y=-wy + rng.uniform(22.0, 30.0),
        rib_period=rng.uniform(30.0, 38.0),
        rib_drop=rng.uniform(75.0, 110.0),
        rib_phase=rng.uniform(0.0, 1.0),
        lung_density=rng.uniform(-880.0, -820.0),
    )


def _wall_scale(z: Array, c: _Chest) -> Array:
    """The rib cage narrows towards the apices."""
    top = max(c.apex) + 15.0
    result: Array = 1.0 - 0.28 * np.clip((z - top + 110.0) / 110.0, 0.0, 1.0) ** 2
    return result


def _in_heart(x: Array, y: Array, z: Array, c: _Chest, grow: float = 0.0) -> Array:
    hx, hy, hz, ha, hb, hc, turn = c.heart
    u = (x - hx) * math.cos(turn) + (y - hy) * math.sin(turn)
    v = -(x - hx) * math.sin(turn) + (y - hy) * math.cos(turn)
    result: Array = (u / (ha + grow)) ** 2 + (v / (hb + grow)) ** 2 + ((z - hz) / (hc + grow)) ** 2 < 1.0
    return result


def _lung_cavity(x: Array, y: Array, z: Array, c: _Chest) -> Array:
    """Where the lungs are: inside the chest wall, outside the mediastinum, under the apices, over the domes."""
    s = _wall_scale(z, c)
    wx, wy = c.wall[0] * s, c.wall[1] * s
    inside = (x / wx) ** 2 + (y / wy) ** 2 < 1.0
    side = x > 0  # the patient's right
    ax = np.abs(x)
    mediastinum = ax < 18.0 + 14.0 * _sigmoid((y + 10.0) / 12.0) + 8.0 * _sigmoid(-(z + 40.0) / 20.0)
    spine = (ax < 30.0) & (y < c.spine_y + 24.0)
    apex = np.where(side, c.apex[0], c.apex[1])
    r_apex = ((ax - 0.5 * wx) / (0.5 * wx)) ** 2 + ((y + 0.15 * wy) / (0.85 * wy)) ** 2
    below_apex = z < apex - 75.0 * r_apex
    dome = np.where(side, c.dome[0], c.dome[1])
    r_dome = ((ax - 0.45 * wx) / (0.6 * wx)) ** 2 + (y / (0.95 * wy)) ** 2
    over_dome = z > dome - 40.0 * r_dome - 25.0 * np.clip(-y / wy, 0.0, 1.0) ** 2
    result: Array = inside & ~mediastinum & ~spine & below_apex & over_dome & ~_in_heart(x, y, z, c, 4.0)
    return result


def _grow_tree(rng: np.random.Generator, root: Array, heading: Array, radius: float, c: _Chest,
               levels: int) -> tuple[Array, Array, Array, Array]:
    """A 3-D vessel tree grown level by level, pruned where it leaves the lung: starts, ends, r0, r1."""
    pos, dirs, rad = root[None].astype(np.float64), heading[None] / np.linalg.norm(heading), np.array([radius])
    out: list[tuple[Array, Array, Array, Array]] = []
    for level in range(levels):
        length = rad * rng.uniform(3.0, 5.0, rad.shape) + 5.0
        end = pos + dirs * length[:, None]
        r_end = rad * rng.uniform(0.88, 0.97, rad.shape)
        ok = _lung_cavity(end[:, 0], end[:, 1], end[:, 2], c) | (level < 2)
        pos, dirs, end, rad, r_end = pos[ok], dirs[ok], end[ok], rad[ok], r_end[ok]
        if len(pos) == 0:
            break
        out.append((pos, end, rad, r_end))
        # two children: turned by 20-45 degrees about a random axis perpendicular to the parent
        axis = np.cross(dirs, rng.standard_normal(dirs.shape))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True) + 1e-9
        children = []
        outward = end - root
        outward /= np.linalg.norm(outward, axis=1, keepdims=True) + 1e-9
        for sign, shrink in ((1.0, rng.uniform(0.78, 0.9, rad.shape)), (-1.0, rng.uniform(0.6, 0.78, rad.shape))):
            angle = sign * np.radians(rng.uniform(20.0, 45.0, rad.shape))[:, None]
            turned = dirs * np.cos(angle) + np.cross(axis, dirs) * np.sin(angle) + 0.35 * outward
            turned /= np.linalg.norm(turned, axis=1, keepdims=True)
            children.append((turned, r_end * shrink))
        pos = np.concatenate([end, end])
        dirs = np.concatenate([children[0][0], children[1][0]])
        rad = np.concatenate([children[0][1], children[1][1]])
        keep = rad > 0.45
        pos, dirs, rad = pos[keep], dirs[keep], rad[keep]
        if len(pos) == 0:
            break
    if not out:
        empty = np.zeros((0, 3))
        return empty, empty, np.zeros(0), np.zeros(0)
    return (np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out]),
            np.concatenate([o[2] for o in out]), np.concatenate([o[3] for o in out]))


@dataclass(frozen=True)
class _Grid:
    """Voxel centres in body millimetres, and the map from body millimetres back to voxel indices."""

    x: Array
    y: Array
    z: Array
    shape: tuple[int, int, int]
    spacing: float
    rotation: Array  # body = rotation @ (voxel mm - volume centre) + centre
    centre: Array

    def to_voxels(self, points: Array) -> Array:
        """(n, 3) body millimetres to fractional voxel indices."""
        local = (points - self.centre) @ self.rotation  # the inverse of a rotation is its transpose
        result: Array = local / self.spacing + (np.asarray(self.shape) - 1) / 2
        return result


def _rotation(rng: np.random.Generator) -> Array:
    yaw, tilt, roll = (math.radians(a) for a in (rng.normal(0, 4.0), rng.normal(0, 2.0), rng.normal(0, 2.0)))
    rz = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    ry = np.array([[math.cos(roll), 0, math.sin(roll)], [0, 1, 0], [-math.sin(roll), 0, math.cos(roll)]])
    result: Array = rz @ rx @ ry
    return result


def _grid(shape: tuple[int, int, int], spacing: float, c: _Chest, rng: np.random.Generator) -> _Grid:
    """Place the field of view: its centre in a lung when it is smaller than the chest, near the middle when not."""
    extent = np.asarray(shape, dtype=float) * spacing
    rotation = _rotation(rng)
    centre = np.zeros(3)
    for _ in range(200):
        wx, wy = c.wall
        room = np.clip(1.0 - extent / np.array([2 * wx + 40, 2 * wy + 40, 400.0]), 0.0, 1.0)
        centre = np.array([rng.uniform(-0.6, 0.6) * wx * room[0] + rng.normal(0, 0.03) * extent[0],
                           rng.uniform(-0.5, 0.4) * wy * room[1] + rng.normal(0, 0.03) * extent[1],
                           rng.uniform(min(c.dome) + 30.0, min(c.apex) - 30.0) * room[2]
                           + (1 - room[2]) * (min(c.apex) + min(c.dome)) / 2])
        if _lung_cavity(centre[:1], centre[1:2], centre[2:], c)[0] or room.max() == 0.0:
            break
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * spacing for n in shape]
    i, j, k = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    r = rotation.astype(np.float32)
    x = r[0, 0] * i + r[0, 1] * j + r[0, 2] * k + np.float32(centre[0])
    y = r[1, 0] * i + r[1, 1] * j + r[1, 2] * k + np.float32(centre[1])
    z = r[2, 0] * i + r[2, 1] * j + r[2, 2] * k + np.float32(centre[2])
    return _Grid(x=x, y=y, z=z, shape=shape, spacing=spacing, rotation=rotation, centre=centre)


def _tubes(g: _Grid, starts: Array, ends: Array, r0: Array, r1: Array) -> tuple[Array, Array]:
    """Occupancy (0..1) of tapering tubes along segments, and the distance (mm) to the nearest centre line.

    Centre lines are sampled into a padded voxel grid; a Euclidean distance transform with indices says, for
    every voxel, how far the nearest centre-line voxel is and how wide the tube is there.
    """
    pad = math.ceil(float(max(r0.max(initial=0.0), r1.max(initial=0.0))) / g.spacing) + 2
    padded = tuple(n + 2 * pad for n in g.shape)
    radius = np.zeros(padded, dtype=np.float32)
    if len(starts):
        lengths = np.linalg.norm(ends - starts, axis=1)
        n = max(2, math.ceil(float(lengths.max()) / (0.5 * g.spacing)) + 1)
        t = np.linspace(0.0, 1.0, n)[:, None]
        points = (starts[None] + t[..., None] * (ends - starts)[None]).reshape(-1, 3)
        radii = (r0[None] + t * (r1 - r0)[None]).reshape(-1)
        idx = np.rint(g.to_voxels(points)).astype(int) + pad
        ok = np.all((idx >= 0) & (idx < np.asarray(padded)), axis=1)
        np.maximum.at(radius, (idx[ok, 0], idx[ok, 1], idx[ok, 2]), radii[ok].astype(np.float32))
    if not radius.any():
        return np.zeros(g.shape, dtype=np.float32), np.full(g.shape, np.inf, dtype=np.float32)
    distance, nearest = ndimage.distance_transform_edt(radius == 0, sampling=g.spacing, return_indices=True)
    crop = (slice(pad, -pad),) * 3
    distance = distance[crop].astype(np.float32)
    width = radius[nearest[0][crop], nearest[1][crop], nearest[2][crop]]
    # partial volume: a thin vessel fills only part of a voxel
    fill = np.clip((np.maximum(width, 0.5 * g.spacing) - distance) / g.spacing + 0.5, 0.0, 1.0)
    fill *= np.clip(math.pi * width**2 / g.spacing**2, 0.0, 1.0)
    return fill.astype(np.float32), distance


def _polyline(points: list[tuple[float, float, float]], radius: float) -> tuple[Array, Array, Array, Array]:
    p = np.asarray(points, dtype=float)
    r = np.full(len(p) - 1, radius)
    return p[:-1], p[1:], r, r


def _stack(*parts: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
    s0, s1, s2, s3 = zip(*parts, strict=True)
    return np.concatenate(s0), np.concatenate(s1), np.concatenate(s2), np.concatenate(s3)


def _great_vessels(c: _Chest) -> tuple[Array, Array, Array, Array]:
    """Aorta (ascending, arch, descending), superior vena cava, pulmonary trunk and arteries."""
    hx, hy, hz, _, _, hc, _ = c.heart
    top = hz + 0.6 * hc
    aorta = _polyline([(hx + 22, hy - 5, top - 10), (12, 10, 15), (8, 5, 45), (-8, -10, 55),
                       (-22, c.spine_y + 22, 40), (-22, c.spine_y + 20, 0), (-18, c.spine_y + 22, min(c.dome) - 80)],
                      13.0)
    cava = _polyline([(30, 5, 140), (28, 5, 40), (hx + 40, hy - 10, top - 15)], 9.0)
    trunk = _polyline([(hx + 5, hy + 15, top - 5), (-12, 15, 5), (-28, 0, 2)], 12.0)
    right_pa = _polyline([(-12, 15, 5), (20, 0, 0), (48, -5, -5)], 9.0)
    left_pa = _polyline([(-28, 0, 2), (-50, -5, 0)], 8.5)
    esophagus = _polyline([(-5, c.spine_y + 30, 140), (-8, c.spine_y + 28, 0), (-25, 10, min(c.dome) - 40)], 6.0)
    return _stack(aorta, cava, trunk, right_pa, left_pa, esophagus)


def _segments_distance(x: Array, y: Array, z: Array, points: list[tuple[float, float, float]]) -> Array:
    """Distance (mm) from every point to a polyline, both in body millimetres."""
    best = np.full(x.shape, np.inf, dtype=np.float32)
    for a, b in pairwise(points):
        e = np.subtract(b, a)
        t = np.clip(((x - a[0]) * e[0] + (y - a[1]) * e[1] + (z - a[2]) * e[2]) / float(e @ e), 0.0, 1.0)
        d2 = (x - a[0] - t * e[0]) ** 2 + (y - a[1] - t * e[1]) ** 2 + (z - a[2] - t * e[2]) ** 2
        np.minimum(best, d2, out=best)
    result: Array = np.sqrt(best)
    return result


def _airways_ct(g: _Grid, c: _Chest) -> tuple[Array, Array]:
    """Occupancy of the lumen (air) and of the wall of the trachea and main bronchi."""
    carina = (0.0, c.spine_y + 42.0, 0.0)
    lumen = np.zeros(g.shape, dtype=np.float32)
    wall = np.zeros(g.shape, dtype=np.float32)
    trees = (([(0.0, c.spine_y + 48.0, 160.0), (0.0, c.spine_y + 45.0, 60.0), carina], 8.5),
             ([carina, (25.0, c.spine_y + 38.0, -15.0), (45.0, c.spine_y + 35.0, -30.0)], 6.5),
             ([carina, (-30.0, c.spine_y + 40.0, -20.0), (-55.0, c.spine_y + 38.0, -40.0)], 6.0))
    near = ((np.abs(g.x) < 70.0) & (np.abs(g.y - c.spine_y - 40.0) < 22.0) & (g.z > -55.0) & (g.z < 175.0))
    if not near.any():
        return lumen, wall
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(near))
    x, y, z = g.x[box], g.y[box], g.z[box]
    for points, radius in trees:
        d = _segments_distance(x, y, z, points)
        lumen[box] = np.maximum(lumen[box], np.clip((radius - d) / g.spacing + 0.5, 0.0, 1.0))
        wall[box] = np.maximum(wall[box], np.clip((radius + 2.0 - d) / g.spacing + 0.5, 0.0, 1.0))
    return lumen, wall


def _skeleton(g: _Grid, c: _Chest) -> Array:
    """Bone HU where there is bone, NaN elsewhere: vertebrae, ribs and costal cartilage, sternum, scapulae."""
    x, y, z = g.x, g.y, g.z
    bone = np.full(g.shape, np.nan, dtype=np.float32)
    # vertebral bodies with cortex and discs; the canal and the posterior arch behind them
    level = (z + 500.0) / 27.0
    disc = np.abs(level - np.floor(level) - 0.5) < 0.1
    rv = np.sqrt((x / 17.0) ** 2 + ((y - c.spine_y) / 14.0) ** 2)
    bone = np.where(rv < 1.0, np.where(disc, 85.0, np.where(rv > 0.82, 750.0, 230.0)), bone)
    canal_y = c.spine_y - 24.0
    rc = np.sqrt((x / 8.5) ** 2 + ((y - canal_y) / 8.0) ** 2)
    arch = (rc > 1.0) & (rc < 1.7) & ~disc
    spinous = (np.abs(x) < 4.0) & (y < canal_y - 10.0) & (y > canal_y - 38.0) & ~disc
    transverse = (np.abs(y - canal_y - 2.0) < 5.0) & (np.abs(x) > 10.0) & (np.abs(x) < 34.0) & ~disc
    bone = np.where(arch | spinous | transverse, 600.0, bone)
    bone = np.where(rc <= 1.0, 15.0, bone)  # cord and fluid
    # ribs: around an ellipse just inside the muscle, dropping as they run forwards
    s = _wall_scale(z, c)
    ex, ey = (c.wall[0] + 6.0) * s, (c.wall[1] + 6.0) * s
    rho = np.sqrt((x / ex) ** 2 + (y / ey) ** 2)
    around = np.arccos(np.clip(-y / (ey * np.maximum(rho, 1e-6)), -1.0, 1.0)) / math.pi  # 0 behind, 1 in front
    phase = (z + c.rib_drop * around**1.4) / c.rib_period + c.rib_phase
    dz = (phase - np.floor(phase) - 0.5) * c.rib_period
    radial = (rho - 1.0) * (ex + ey) / 2
    number = np.floor(phase)
    top = (max(c.apex) + 10.0) / c.rib_period + c.rib_phase
    in_rib = ((dz / 6.5) ** 2 + (radial / 4.5) ** 2 < 1.0) & (number < top) & (around > 0.1)
    rib_hu = np.where((dz / 6.5) ** 2 + (radial / 4.5) ** 2 > 0.5, 800.0, 260.0)
    rib_hu = np.where(around > 0.78, 130.0, rib_hu)  # costal cartilage
    bone = np.where(in_rib & (around < 0.9), rib_hu, bone)
    sternum = ((np.abs(x) < 16.0) & (np.abs(y - ey * 1.0 - 2.0) < 6.0) & (z < max(c.apex) - 40.0)
               & (z > min(c.dome) - 30.0))
    bone = np.where(sternum, np.where(np.abs(y - ey - 2.0) > 4.0, 650.0, 300.0), bone)
    scapula = ((np.abs(radial - 22.0) < 3.0) & (around > 0.2) & (around < 0.38) & (z > min(c.apex) - 150.0)
               & (z < min(c.apex) - 10.0))
    bone = np.where(scapula, 550.0, bone)
    result: Array = bone
    return result


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> Array:
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    result: Array = field / (field.std() + 1e-6)
    return result


def _anatomy(g: _Grid, c: _Chest, rng: np.random.Generator) -> tuple[Array, Array, Array, Array]:
    """HU before any nodule, blur or noise; the lung parenchyma (no vessel or airway); texture; vessel distance."""
    x, y, z = g.x, g.y, g.z
    bx, by = c.body
    norm = (np.abs(x / bx) ** 2.4 + np.abs(y / by) ** 2.4) ** (1 / 2.4)
    hu: Array = np.full(g.shape, _AIR, dtype=np.float32)
    texture = _smooth_noise(rng, g.shape, 1.5 / g.spacing + 0.5)
    hu = np.where(norm < 1.0, _FAT + 8.0 * texture, hu)
    inner = (np.abs(x / (bx - c.fat)) ** 2.4 + np.abs(y / (by - c.fat)) ** 2.4) ** (1 / 2.4)
    hu = np.where(inner < 1.0, _MUSCLE, hu)
    s = _wall_scale(z, c)
    pleura = (x / (c.wall[0] * s)) ** 2 + (y / (c.wall[1] * s)) ** 2 < 1.0
    hu = np.where(pleura, -80.0, hu)  # mediastinal fat unless something else is there
    for side in (-1.0, 1.0):  # paraspinal muscles
        hu = np.where(((x - side * 36.0) / 26.0) ** 2 + ((y - c.spine_y + 22.0) / 24.0) ** 2 < 1.0, _MUSCLE, hu)
    dome = np.where(x > 0, c.dome[0], c.dome[1])
    abdomen = pleura & (z < dome - 20.0 * ((np.abs(x) - 0.45 * c.wall[0]) / (0.6 * c.wall[0])) ** 2)
    hu = np.where(abdomen, np.where(x > -20.0, _LIVER, 35.0), hu)
    hu = np.where(_in_heart(x, y, z, c, 4.0), -90.0, hu)  # pericardial fat
    hu = np.where(_in_heart(x, y, z, c), _BLOOD + 5.0 * texture, hu)
    lungs = _lung_cavity(x, y, z, c)
    gravity = 70.0 * _sigmoid(-(y + 0.45 * c.wall[1]) / (0.15 * c.wall[1]))  # dependent lung is denser
    lung_hu = c.lung_density + gravity + 18.0 * texture
    hu = np.where(lungs, lung_hu, hu)
    # vessels: great vessels in the mediastinum, two trees per lung from the hila
    trees = [_great_vessels(c)]
    for side in (-1.0, 1.0):
        for lift, heading in ((25.0, (0.6, -0.1, 0.8)), (-25.0, (0.6, -0.2, -0.8)), (0.0, (1.0, 0.3, -0.1)),
                              (10.0, (0.7, 0.6, 0.3)), (-15.0, (0.6, -0.7, -0.3))):
            root = np.array([side * 48.0, -5.0, lift * 0.4 - 5.0])
            direction = np.array([side * heading[0], heading[1], heading[2]]) + rng.normal(0, 0.15, 3)
            trees.append(_grow_tree(rng, root, direction, rng.uniform(4.0, 6.0), c, 14))
    fill, distance = _tubes(g, *_stack(*trees))
    hu = np.where(pleura, hu * (1.0 - fill) + _BLOOD * fill, hu)
    lumen, wall = _airways_ct(g, c)
    hu = hu * (1.0 - wall) + 20.0 * wall
    hu = hu * (1.0 - lumen) + _AIR * lumen
    bone = _skeleton(g, c)
    hu = np.where(np.isnan(bone) | (norm >= 1.0), hu, bone)
    # the table, a curved shell under the patient
    table = (np.abs(y + by + 6.0 - 0.0012 * x**2) < 3.0) & (np.abs(x) < 220.0)
    hu = np.where(table, 180.0, hu)
    parenchyma = lungs & (fill < 0.3) & (lumen < 0.3) & (wall < 0.3)  # where a nodule can be told apart
    return hu.astype(np.float32), parenchyma, texture, distance


def _nodule_shape(x: Array, y: Array, z: Array, centre: Array, radius: float, spacing: float,
                  rng: np.random.Generator) -> Array:
    """Soft occupancy (0..1) of one lobulated, turned ellipsoid at body-millimetre points."""
    axes = radius * rng.uniform(0.85, 1.15, 3)
    turn = _rotation(rng) @ _rotation(rng)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    u = (turn[0, 0] * dx + turn[1, 0] * dy + turn[2, 0] * dz) / axes[0]
    v = (turn[0, 1] * dx + turn[1, 1] * dy + turn[2, 1] * dz) / axes[1]
    w = (turn[0, 2] * dx + turn[1, 2] * dy + turn[2, 2] * dz) / axes[2]
    rho = np.sqrt(u * u + v * v + w * w)
    polar = np.arccos(np.clip(w / np.maximum(rho, 1e-6), -1.0, 1.0))
    lobes = 1.0 + 0.07 * np.sin(3.0 * np.arctan2(v, u) + rng.uniform(0, 6.3)) * np.cos(2.0 * polar
                                                                                   + rng.uniform(0, 6.3))
    result: Array = np.clip((lobes - rho) * radius / spacing + 0.5, 0.0, 1.0)
    return result


_NODULE_KINDS = ("parenchymal", "juxtapleural", "juxtavascular")


def _place_nodules(g: _Grid, hu: Array, lungs: Array, vessel_distance: Array, texture: Array, count: int,
                   rng: np.random.Generator) -> tuple[Array, Array]:
    """Draw ``count`` solid nodules in the lungs, inside the field of view, apart from each other.

    Diameters are 4-20 mm (smaller when nothing bigger fits); a nodule lies in the parenchyma, against the
    pleura, or beside a vessel. The mask is the nodule's part in the lung, one connected piece per nodule.
    """
    mask = np.zeros(g.shape, dtype=np.uint8)
    if count == 0:
        return hu, mask
    inside = ndimage.distance_transform_edt(lungs, sampling=g.spacing).astype(np.float32)
    border = np.full(g.shape, np.iinfo(np.int32).max, dtype=np.int32)
    for axis, n in enumerate(g.shape):
        edge = np.minimum(np.arange(n), n - 1 - np.arange(n)).astype(np.int32)
        border = np.minimum(border, edge.reshape([-1 if a == axis else 1 for a in range(3)]))
    hu = hu.copy()
    centres: list[tuple[Array, float]] = []
    for _ in range(count):
        for attempt in range(60):
            radius = rng.uniform(2.0, 10.0) * (0.9 ** (attempt // 6))
            kind = _NODULE_KINDS[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
            where = border * g.spacing > 1.35 * radius + 2.0 * g.spacing
            if kind == "juxtapleural":
                where &= (inside > 0.3 * radius) & (inside < 0.8 * radius)
            elif kind == "juxtavascular":
                where &= (inside > 0.8 * radius) & (vessel_distance > radius) & (vessel_distance < radius + 3.0)
            else:
                where &= inside > 1.2 * radius
            for other, other_radius in centres:
                apart = 1.35 * (radius + other_radius) + 3.0 * g.spacing
                where &= (g.x - other[0]) ** 2 + (g.y - other[1]) ** 2 + (g.z - other[2]) ** 2 > apart**2
            candidates = np.flatnonzero(where)
            if len(candidates):
                break
        else:
            raise ValueError(f"no room for {count} nodules in a field of view of {g.shape} at {g.spacing} mm")
        pick = np.unravel_index(int(rng.choice(candidates)), g.shape)
        centre = np.array([g.x[pick], g.y[pick], g.z[pick]], dtype=float)
        centres.append((centre, radius))
        reach = math.ceil(1.35 * radius / g.spacing) + 1
        box = tuple(slice(max(0, int(p) - reach), int(p) + reach + 1) for p in pick)
        fill = _nodule_shape(g.x[box], g.y[box], g.z[box], centre, radius, g.spacing, rng) * lungs[box]
        solid = fill >= 0.5  # the part in the chest wall cannot be told from it and is left out
        parts, n = ndimage.label(solid)
        if n > 1:
            sizes = ndimage.sum_labels(solid, parts, index=np.arange(1, n + 1))
            solid = parts == 1 + int(np.argmax(sizes))
        if not solid.any():
            solid[tuple(int(p) - b.start for p, b in zip(pick, box, strict=True))] = True
        density = rng.uniform(20.0, 60.0) + 8.0 * texture[box]
        hu[box] = hu[box] * (1.0 - fill) + density * fill
        mask[box][solid] = 1
    return hu, mask


def ct_chest(seed: int, shape: tuple[int, int, int] = (64, 64, 64), spacing: float = 2.0,
             nodules: int | None = None) -> ChestCT:
    """Draw a chest CT for ``seed``: ``shape`` voxels of ``spacing`` mm, somewhere around the lungs.

    The anatomy is drawn in millimetres (a 64^3 field of 2 mm shows part of a chest; 192^3 shows all of it).
    ``nodules`` None lets the seed choose 0-3; the count asked for is always honoured, or ValueError is raised
    when the field of view holds too little lung for it.
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be (x, y, z), each >= 8; got {shape}")
    if not spacing > 0:
        raise ValueError(f"spacing must be > 0, got {spacing}")
    rng = _rng(seed, _ANATOMY)
    chance = _rng(seed, _FINDING)
    drawn = int(chance.integers(0, 4))
    count = drawn if nodules is None else int(nodules)
    if not 0 <= count <= 3:
        raise ValueError(f"nodules must be 0-3, got {nodules}")
    c = _chest(rng)
    g = _grid(shape, spacing, c, rng)
    hu, lungs, texture, vessel_distance = _anatomy(g, c, rng)
    hu, mask = _place_nodules(g, hu, lungs, vessel_distance, texture, count, chance)
    hu = ndimage.gaussian_filter(hu, rng.uniform(0.4, 1.1) * 2.0 / spacing)
    noise = _rng(seed, _NOISE)
    grain = noise.standard_normal(shape, dtype=np.float32)
    grain = ndimage.gaussian_filter(grain, rng.uniform(0.0, 0.8)) if rng.random() < 0.7 else grain
    grain *= rng.uniform(5.0, 40.0) / (grain.std() + 1e-6)
    hu = np.clip(hu + grain, -1024.0, 3071.0)
    return ChestCT(hu=hu.astype(np.float32), nodules=mask, count=count, spacing=float(spacing))
