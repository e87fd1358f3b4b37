"""Domain-randomised phantoms: what the demonstration models train on (numpy + scipy; deterministic from a seed).

:mod:`training.phantoms` draws one narrow family; a model trained on it alone learned that family (issue 26:
on another generator's normal radiographs cxr-demo said p = 0.9999, and ct-nodule-demo found nodules on
clean chests). These generators draw the same two tasks over much wider ranges and add the structures that
look like the target (hard negatives), then pass the picture through a randomised acquisition:

- :func:`radiograph`: anatomy sizes, positions and densities; 8-12 ribs of varying width and contrast, rib
  ends, clavicles and scapulae; breast shadows; devices (lines and tubes, ECG electrodes, markers);
  collimation; blur; an intensity transfer curve (power, logarithmic or film-like sigmoid), exposure and
  offset; additive, signal-dependent or correlated noise; rotation, zoom and crop; detector sizes from
  96 to 160 pixels a side and aspect 0.8-1.25 (the engine resizes them to the model's 64 x 64).
  Opacities are fainter and of more sizes than in :mod:`training.phantoms`.
- :func:`ct_chest`: body sizes from a child's to a large adult's, so that a 64^3 field at 2 mm may show
  the whole chest or a part of it; lungs with a diaphragm dome and the liver or spleen under it; a
  vertebra with its body, canal and processes; ribs that end in the field, with costal cartilage;
  scapulae; heart and aorta with or without contrast; vessel trees that branch from the hila (branchings
  are blobs of blood density) and free vessels; airways; 0-3 nodules of 5-24 mm, round, oval or
  lobulated, some against the pleura; blur per axis (slice thickness), white or correlated noise, an HU
  offset.

Inverted contrast is deliberately not drawn: an uncorrected MONOCHROME1 radiograph is the input that the
engine must flag as outside the training distribution (``dicomnode/inference/distribution.py``).
Seeds are those of :mod:`training.phantoms` (the same ranges); ``[seed, 11]`` / ``[seed, 12]`` streams.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dicomnode.inference.geometry import resample
from training.phantoms import ChestCT, Radiograph, _band, _ellipse, _soft


def _transfer(density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A randomised detector/processing curve, monotonic increasing (bright = dense), to roughly [0, 1]."""
    d = np.clip(density, 0, None)
    d = d / max(float(d.max()), 1e-6)
    kind = rng.integers(3)
    if kind == 0:  # power law
        out = d ** rng.uniform(0.5, 2.0)
    elif kind == 1:  # logarithmic (attenuation read as log exposure)
        k = rng.uniform(1.0, 6.0)
        out = np.log1p(k * d) / np.log1p(k)
    else:  # film-like sigmoid around a random speed point
        centre, slope = rng.uniform(0.3, 0.7), rng.uniform(4.0, 12.0)
        lo, hi = 1 / (1 + np.exp(slope * centre)), 1 / (1 + np.exp(-slope * (1 - centre)))
        out = (1 / (1 + np.exp(-slope * (d - centre))) - lo) / (hi - lo)
    result: np.ndarray = out
    return result


def _noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive white, signal-dependent (quantum) or spatially correlated noise of a random level."""
    level = rng.uniform(0.005, 0.04)
    kind = rng.integers(3)
    white = rng.normal(0, 1, image.shape)
    if kind == 0:
        out: np.ndarray = image + level * white
    elif kind == 1:
        out = image + level * np.sqrt(np.clip(image, 0, None) + 0.05) * white
    else:
        smooth = ndimage.gaussian_filter(white, rng.uniform(0.7, 2.0))
        out = image + level * smooth / max(float(smooth.std()), 1e-6) + 0.5 * level * rng.normal(0, 1, image.shape)
    return out


def _rotate_zoom(image: np.ndarray, rng: np.random.Generator, masks: list[np.ndarray]) -> list[np.ndarray]:
    """Rotate (+-12 degrees), zoom (0.85-1.2) and shift the image and its masks together; edge padding."""
    rows, cols = image.shape
    angle = np.deg2rad(rng.uniform(-12, 12))
    zoom = rng.uniform(0.85, 1.2)
    shift = rng.uniform(-0.06, 0.06, 2) * np.array([rows, cols])
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.array([[c, -s], [s, c]]) / zoom
    centre = np.array([rows - 1, cols - 1]) / 2
    offset = centre - matrix @ (centre + shift)
    out = [ndimage.affine_transform(image, matrix, offset, order=1, mode="nearest")]
    out += [ndimage.affine_transform(m.astype(np.float32), matrix, offset, order=0, mode="constant") > 0.5
            for m in masks]
    return out


def radiograph(seed: int, shape: tuple[int, int] | None = None, finding: bool | None = None) -> Radiograph:
    """One domain-randomised frontal chest radiograph; ``shape=None`` draws the detector size too."""
    with np.errstate(over="ignore"):  # the soft edges' exponentials saturate far from an edge
        return _radiograph(seed, shape, finding)


def _radiograph(seed: int, shape: tuple[int, int] | None, finding: bool | None) -> Radiograph:
    rng = np.random.default_rng([seed, 11])
    if finding is None:
        finding = bool(rng.random() < 0.5)
    if shape is None:
        side = int(rng.integers(96, 161))
        shape = (side, int(np.clip(side * rng.uniform(0.8, 1.25), 80, 192)))
    rows, cols = shape
    y, x = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    s = rng.uniform(0.55, 1.4)  # above 1: the detector crops the trunk
    x = (x - rng.uniform(-0.15, 0.15)) / (s * rng.uniform(0.8, 1.25))
    y = (y - rng.uniform(-0.15, 0.15)) / s
    density = np.full(shape, rng.uniform(0.0, 0.06))
    trunk = _soft(_ellipse(x, y, 0, 0.1, rng.uniform(0.85, 1.05), 1.15), rng.uniform(0.02, 0.06))
    density += rng.uniform(0.3, 0.6) * trunk
    if rng.random() < 0.75:  # upper arms
        amplitude = rng.uniform(0.1, 0.35)  # (the order of the draws is the shipped model's)
        density += amplitude * _soft(_ellipse(np.abs(x), y, rng.uniform(0.95, 1.15), -0.1, 0.12, 0.9), 0.05)
    dome = rng.uniform(0.25, 0.6)
    lungs = np.zeros(shape)
    lung_sides = []
    for side in (-1, 1):
        lx = side * rng.uniform(0.32, 0.5)
        rx, ry = rng.uniform(0.22, 0.38), rng.uniform(0.5, 0.8)
        lung = _soft(_ellipse(x, y, lx, -0.08, rx, ry), rng.uniform(0.02, 0.07))
        diaphragm = 1.0 / (1.0 + np.exp((y - (dome + side * rng.uniform(0.0, 0.1) - 0.35 * (x - lx) ** 2)) / 0.02))
        lungs = np.maximum(lungs, lung * diaphragm)
        lung_sides.append((lx, rx, ry))
    dark = rng.uniform(0.2, 0.42)  # how much less dense the lungs are than the trunk
    density -= dark * lungs
    # the abdomen under the domes, often denser than the chest wall; the neck above the shoulders
    below = (1.0 / (1.0 + np.exp(-(y - dome - rng.uniform(0.05, 0.2)) / 0.04))) * trunk
    density += rng.uniform(0.0, 0.35) * below
    density += rng.uniform(0.0, 0.25) * _soft(_ellipse(x, y, 0.0, -1.05, rng.uniform(0.15, 0.3), 0.3), 0.08)
    markings = np.zeros(shape)  # vascular markings: lines fanning out from the hila, fading outwards
    for side in (-1, 1):
        for _ in range(int(rng.integers(0, 14))):
            angle = rng.uniform(-2.6, 2.6) * 0.5 + (0 if side > 0 else np.pi)
            length = rng.uniform(0.2, 0.5)
            x0, y0 = side * rng.uniform(0.1, 0.2), rng.uniform(-0.2, 0.1)
            markings += _band(x, y, x0, y0, x0 + length * np.cos(angle), y0 + length * np.sin(angle),
                              rng.uniform(0.008, 0.02))
    density += rng.uniform(0.0, 0.1) * np.clip(markings, 0, 1) * lungs
    density += rng.uniform(0.12, 0.45) * _soft(_ellipse(x, y, rng.uniform(0.0, 0.2), rng.uniform(0.1, 0.25),
                                                       rng.uniform(0.25, 0.42), rng.uniform(0.18, 0.32)), 0.05)
    density += rng.uniform(0.1, 0.25) * _soft(_ellipse(x, y, 0.0, -0.35, rng.uniform(0.09, 0.16), 0.6), 0.05)
    density += rng.uniform(0.05, 0.15) * _soft(_ellipse(x, y, 0.0, 0.0, rng.uniform(0.04, 0.07), 1.3), 0.05)
    body = trunk
    ribs = np.zeros(shape)
    count, gap = int(rng.integers(8, 13)), rng.uniform(0.1, 0.16)
    width, top = rng.uniform(0.01, 0.03), rng.uniform(-0.8, -0.65)
    for side in (-1, 1):
        for k in range(count):
            y0 = top + k * gap
            bend = rng.uniform(0.2, 0.35)
            curve = y0 + bend * (x * side - 0.05) ** 2 - 0.08 * (x * side)
            end = rng.uniform(0.55, 0.92)  # rib ends: some stop inside the lung field
            ribs += np.exp(-0.5 * ((y - curve) / width) ** 2) * (x * side > 0.06) * (x * side < end)
            if rng.random() < 0.5:  # anterior rib, fainter and sloping the other way
                curve2 = y0 + 0.15 - 0.2 * (x * side - 0.1) ** 2 + 0.1 * (x * side)
                ribs += 0.5 * np.exp(-0.5 * ((y - curve2) / width) ** 2) * (x * side > 0.2) * (x * side < 0.7)
    density += rng.uniform(0.04, 0.16) * np.clip(ribs, 0, 1) * body
    for side in (-1, 1):  # clavicles
        amplitude = rng.uniform(0.08, 0.2)
        start_y, end_x = rng.uniform(-0.8, -0.6), side * rng.uniform(0.5, 0.7)
        density += amplitude * _band(x, y, side * 0.06, start_y, end_x, rng.uniform(-0.9, -0.7),
                                     rng.uniform(0.015, 0.035))
        if rng.random() < 0.5:  # scapula edge over the lateral lung
            edge = _soft(_ellipse(x, y, side * rng.uniform(0.75, 0.95), -0.45, 0.25, 0.4), 0.08)
            density += rng.uniform(0.03, 0.08) * edge
    if rng.random() < 0.4:  # breast shadows over the lung bases
        for side in (-1, 1):
            amplitude = rng.uniform(0.05, 0.15)
            breast = _ellipse(x, y, side * rng.uniform(0.4, 0.6), rng.uniform(0.3, 0.5), rng.uniform(0.25, 0.35),
                              rng.uniform(0.2, 0.3))
            density += amplitude * _soft(breast, 0.15)
    if rng.random() < 0.4:  # devices: a line or tube, electrodes, a marker
        for _ in range(int(rng.integers(1, 3))):
            x0, y0 = rng.uniform(-0.6, 0.6), rng.uniform(-1.0, -0.6)
            x1, y1 = rng.uniform(-0.4, 0.4), rng.uniform(-0.2, 0.4)
            density += rng.uniform(0.1, 0.5) * _band(x, y, x0, y0, x1, y1, rng.uniform(0.006, 0.015))
    if rng.random() < 0.15:  # ECG electrodes
        for _ in range(int(rng.integers(1, 6))):
            ex, ey = rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.6)
            density += rng.uniform(0.2, 0.6) * _soft(_ellipse(x, y, ex, ey, 0.03, 0.03), 0.1)
    if rng.random() < 0.3:
        mx, my = rng.choice([-0.8, 0.8]), rng.uniform(-0.9, -0.6)
        density += rng.uniform(0.3, 0.8) * ((np.abs(x - mx) < 0.05) & (np.abs(y - my) < 0.06))
    opacity = np.zeros(shape, dtype=bool)
    if finding:
        ys, xs = np.nonzero(lungs > 0.7)
        i = rng.integers(len(ys))
        oy, ox = y[ys[i], xs[i]], x[ys[i], xs[i]]
        kind = rng.random()
        if kind < 0.5:  # focal: a nodule or mass, from a few pixels to a mass; fills part of the lung's air
            r = float(np.exp(rng.uniform(np.log(0.035), np.log(0.18))))
            blob = _soft(_ellipse(x, y, ox, oy, r, r * rng.uniform(0.7, 1.3)), rng.uniform(0.03, 0.1))
            amplitude = dark * rng.uniform(0.6, 1.2)
        else:  # patchy / consolidation, confined to the lung
            blob = np.zeros(shape)
            for _ in range(rng.integers(3, 10)):
                r = rng.uniform(0.07, 0.15)
                bx, by = ox + rng.normal(0, 0.1), oy + rng.normal(0, 0.12)
                blob = np.maximum(blob, _soft(_ellipse(x, y, bx, by, r, r * rng.uniform(0.7, 1.3)), 0.3))
            blob *= np.clip(lungs * 1.2, 0, 1)
            amplitude = dark * rng.uniform(0.5, 1.2)
        density += amplitude * blob
        opacity = blob > 0.5
    density = ndimage.gaussian_filter(density, sigma=rng.uniform(0.3, 1.3) * rows / 128)
    image = _transfer(density, rng)
    exposed = np.ones(shape, dtype=bool)
    if rng.random() < 0.25:  # collimation: a border of the detector outside the beam
        border = [int(rng.integers(0, max(1, n // 10))) for n in (rows, rows, cols, cols)]
        fill = float(rng.uniform(0.0, 1.0))
        for region in (np.s_[:border[0]], np.s_[rows - border[1]:], np.s_[:, :border[2]], np.s_[:, cols - border[3]:]):
            image[region] = fill
            exposed[region] = False
    image = _noise(image, rng)
    image, opacity, exposed = _rotate_zoom(image, rng, [opacity, exposed])
    opacity &= exposed
    image = rng.uniform(50, 4000) * image + rng.uniform(-500, 1000)
    # the label is what the detector shows: an opacity cropped or collimated away leaves a normal image
    return Radiograph(image=image.astype(np.float32), finding=bool(finding and opacity.sum() >= 4),
                      opacity=opacity.astype(bool))


def _segment(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) of each point of ``pts`` (..., 3) from the segment a-b."""
    ab = b - a
    t = np.clip(((pts - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    out: np.ndarray = np.linalg.norm(pts - (a + t[..., None] * ab), axis=-1)
    return out


def ct_chest(seed: int, shape: tuple[int, int, int] = (64, 64, 64), spacing: float = 2.0,
             nodules: int | None = None, centre: tuple[float, float, float] | None = None,
             jitter: float = 0.0, anywhere: bool = False) -> ChestCT:
    """A domain-randomised chest CT in HU, RAS ``(x, y, z)``, on ``shape`` voxels of ``spacing`` mm.

    ``centre`` and ``jitter`` as :func:`training.phantoms.ct_chest`; ``centre=None`` looks at the whole
    chest when it fits the grid, and otherwise at a point in the lungs; ``anywhere`` at any point of the
    chest (the hard negatives: bone, heart, chest wall, the liver under the domes).
    """
    rng = np.random.default_rng([seed, 12])
    if nodules is None:
        nodules = int(rng.integers(0, 4))
    scale = rng.uniform(0.35, 1.15)  # child to large adult
    half_w, half_ap = scale * rng.uniform(140, 175), scale * rng.uniform(95, 125)
    lung_len = scale * rng.uniform(90, 135)
    field = np.asarray(shape) * spacing
    if anywhere:
        centre = (rng.uniform(-1, 1) * half_w, rng.uniform(-1, 1) * half_ap, rng.uniform(-1.1, 0.8) * lung_len)
    elif centre is None:
        if field[0] >= 1.6 * half_w or rng.random() < 0.3:
            centre = (rng.uniform(-15, 15) * scale, rng.uniform(-15, 15) * scale, rng.uniform(-0.4, 0.4) * lung_len)
        else:
            centre = (rng.choice([-1, 1]) * rng.uniform(0.25, 0.55) * half_w, rng.uniform(-0.25, 0.25) * half_ap,
                      rng.uniform(-0.5, 0.5) * lung_len)
        if jitter:
            shift = rng.uniform(-jitter, jitter, 3) * min(1.0, scale + 0.2)
            centre = (centre[0] + shift[0], centre[1] + shift[1], centre[2] + shift[2])
    axes = [(np.arange(n) - (n - 1) / 2) * spacing + c for n, c in zip(shape, centre, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    hu = np.full(shape, rng.uniform(-1020, -980))
    body = ((x / half_w) ** 2 + (y / half_ap) ** 2) < 1
    hu[body] = rng.uniform(15, 60)
    rim = rng.uniform(5, 25) * scale + 3
    fat = body & (((x / (half_w - rim)) ** 2 + (y / (half_ap - 0.8 * rim)) ** 2) > 1)
    hu[fat] = rng.uniform(-130, -70)
    zs = np.clip(1 - (z / lung_len) ** 2, 0, 1)
    lungs = np.zeros(shape, dtype=bool)
    dome_z = -rng.uniform(0.3, 0.7) * lung_len
    for side in (-1, 1):
        lx = side * rng.uniform(0.38, 0.52) * half_w
        rx, ry = rng.uniform(0.28, 0.38) * half_w, rng.uniform(0.6, 0.8) * half_ap
        shape_xy = ((x - lx) / rx) ** 2 + ((y + 0.05 * half_ap) / ry) ** 2
        # diaphragm: the lung's floor rises towards the middle of each lung (a dome)
        floor = dome_z - rng.uniform(0.1, 0.3) * lung_len * np.clip(shape_xy, 0, 1) + side * rng.uniform(0, 10) * scale
        lungs |= (shape_xy < zs) & (z > floor)
    core = ((x / (0.85 * half_w)) ** 2 + (y / (0.85 * half_ap)) ** 2) < 1
    below = body & ~lungs & (z < dome_z + 0.2 * lung_len) & core
    hu[below] = rng.uniform(40, 75)  # liver and spleen under the domes
    hu[lungs] = rng.uniform(-920, -760)
    hx, hy = rng.uniform(0.05, 0.2) * half_w, rng.uniform(0.15, 0.35) * half_ap
    heart = (((x - hx) / (0.35 * half_w)) ** 2 + ((y - hy) / (0.4 * half_ap)) ** 2
             + ((z - dome_z - 0.3 * lung_len) / (0.45 * lung_len)) ** 2) < 1
    contrast = rng.random() < 0.35
    blood = rng.uniform(150, 320) if contrast else rng.uniform(25, 60)
    hu[heart & body] = blood if contrast else rng.uniform(30, 55)
    # aorta: ascending in front, descending beside the spine
    for ax_, ay_, r_ in ((0.05 * half_w, 0.1 * half_ap, 12 * scale + 4),
                         (-0.12 * half_w, -0.55 * half_ap, 10 * scale + 3)):
        aorta = ((x - ax_) ** 2 + (y - ay_) ** 2) < r_**2
        hu[aorta & body & ~lungs & (z > dome_z)] = blood
    # vertebra: body, canal, posterior processes; discs between bodies
    vy = -half_ap + (30 + rng.uniform(0, 15)) * scale
    vr = rng.uniform(12, 20) * scale + 3
    bone = rng.uniform(180, 380)
    vert_body = (x**2 + (y - vy - vr * 0.6) ** 2) < vr**2
    canal = (x**2 + (y - vy + vr * 0.6) ** 2) < (0.45 * vr) ** 2
    process = ((np.abs(x) < 0.25 * vr) & (y < vy - 0.2 * vr) & (y > vy - 1.8 * vr)) | (
        (np.abs(y - vy + 0.6 * vr) < 0.25 * vr) & (np.abs(x) < 1.4 * vr))
    period = rng.uniform(22, 30) * scale + 5
    disc = np.mod(z + rng.uniform(0, period), period) < 0.2 * period
    hu[vert_body & body] = np.where(disc[vert_body & body], 80.0, bone)
    hu[process & body & ~canal] = bone + rng.uniform(100, 300)
    hu[canal & body] = 20.0
    # ribs: tubes along the chest wall that may end in the field, with cartilage in front
    ring = ((x / (half_w - 0.6 * rim)) ** 2 + (y / (half_ap - 0.5 * rim)) ** 2)
    angle = np.arctan2(y, x)
    rib_hu = rng.uniform(350, 800)
    width = rng.uniform(6, 11) * scale + 2
    gap = rng.uniform(20, 30) * scale + 6
    rib_phase = np.mod(z + 0.15 * half_ap * np.sin(angle) + rng.uniform(0, gap), gap)
    ribs = (ring > rng.uniform(0.78, 0.86)) & (ring < 0.96) & (rib_phase < width)
    front = np.abs(angle - np.pi / 2) < rng.uniform(0.3, 0.8)  # anterior: costal cartilage, the rib ends there
    hu[ribs & body & ~front] = rib_hu
    hu[ribs & body & front] = rng.uniform(90, 200)
    if rng.random() < 0.6:  # scapulae: plates behind the posterior ribs
        for side in (-1, 1):
            radius = ((x - side * 0.6 * half_w) ** 2 + (y + 0.9 * half_ap) ** 2) ** 0.5
            plate = np.abs(radius - 0.35 * half_w) < 4 * scale + 2
            hu[plate & ~body & (z > 0)] = rng.uniform(300, 700)
            hu[plate & body & ~lungs & (z > 0)] = rng.uniform(300, 700)
    lung_idx = np.argwhere(lungs)
    grid = np.asarray(shape)

    def near(c_mm: np.ndarray, reach: float) -> tuple[tuple[slice, ...], np.ndarray]:
        ci = (c_mm - np.array([a[0] for a in axes])) / spacing
        lo = np.clip(np.floor(ci - reach / spacing), 0, grid).astype(int)
        hi = np.clip(np.ceil(ci + reach / spacing) + 1, 0, grid).astype(int)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        return box, np.stack([x[box], y[box], z[box]], axis=-1)

    def tube(a: np.ndarray, b: np.ndarray, radius: float, value: float, where: np.ndarray) -> None:
        box, pts = near((a + b) / 2, float(np.linalg.norm(b - a)) / 2 + radius + spacing)
        if pts.size == 0:
            return
        inside = (_segment(pts, a, b) < radius) & where[box]
        hu[box][inside] = value

    vessel_hu = blood if rng.random() < 0.5 else rng.uniform(20, 60)
    hilum = body & ~lungs & (hu > -50) & (hu < 100)
    short = rng.random() < 0.5  # short segments (many branchings, as dense trees) or long ones
    for side in (-1, 1):  # vessel trees from the hila: each branching a blob of blood density
        root = np.array([side * 0.2 * half_w, 0.0, dome_z + 0.5 * lung_len]) + rng.normal(0, 5, 3)
        stack = [(root, rng.normal(size=3) + np.array([side * 1.5, 0, 0]), rng.uniform(3.0, 6.5) * (0.5 + 0.5 * scale))]
        drawn = 0
        while stack and drawn < (160 if short else 40):
            start, direction, radius = stack.pop(0)  # breadth first: the thick trunks before the twigs
            direction = direction / np.linalg.norm(direction)
            length = radius * rng.uniform(3, 5) + 5 if short else rng.uniform(20, 45) * (0.5 + 0.5 * scale)
            end = start + direction * length
            tube(start, end, radius, vessel_hu + rng.normal(0, 8), lungs | hilum)
            drawn += 1
            if radius > (0.5 if short else 1.0):
                outward = (end - root) / max(float(np.linalg.norm(end - root)), 1e-6)
                for shrink in (rng.uniform(0.78, 0.92), rng.uniform(0.6, 0.8)):
                    turn = direction + rng.normal(0, 0.6, 3) + 0.35 * outward
                    stack.append((end, turn, radius * shrink))
    if len(lung_idx):
        for _ in range(int(rng.integers(8, 40))):  # free vessels, crossing the field at any angle
            i = lung_idx[rng.integers(len(lung_idx))]
            a = np.array([x[tuple(i)], y[tuple(i)], z[tuple(i)]])
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            length = rng.uniform(20, 90)
            tube(a - direction * length / 2, a + direction * length / 2, rng.uniform(0.7, 4.5),
                 vessel_hu + rng.normal(0, 10), lungs)
        for _ in range(int(rng.integers(0, 4))):  # airways: air tubes with a soft-tissue wall
            i = lung_idx[rng.integers(len(lung_idx))]
            a = np.array([x[tuple(i)], y[tuple(i)], z[tuple(i)]])
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            b, r = a + direction * rng.uniform(20, 50), rng.uniform(2, 5)
            tube(a, b, r, rng.uniform(-50, 50), lungs)
            tube(a, b, r - 1.0, -980.0, lungs)
    mask = np.zeros(shape, dtype=np.uint8)
    count = 0
    if len(lung_idx):
        for _ in range(nodules):
            i = lung_idx[rng.integers(len(lung_idx))]
            c = np.array([x[tuple(i)], y[tuple(i)], z[tuple(i)]])
            r = rng.uniform(2.5, 12.0)
            box, pts = near(c, 2.2 * r + spacing)
            if rng.random() < 0.35:  # lobulated: a few overlapping balls
                inside = np.zeros(pts.shape[:-1], dtype=bool)
                for _ in range(int(rng.integers(2, 5))):
                    cc = c + rng.normal(0, 0.45 * r, 3)
                    inside |= np.linalg.norm(pts - cc, axis=-1) < r * rng.uniform(0.55, 0.9)
            else:
                stretch = rng.uniform(0.7, 1.3, size=3)
                d = np.sqrt((((pts - c) / stretch) ** 2).sum(axis=-1))
                ang = np.arctan2(pts[..., 1] - c[1], pts[..., 0] - c[0])
                inside = d < r * (1 + rng.uniform(0, 0.15) * np.sin(rng.uniform(2, 6) * ang + rng.uniform(0, 6)))
            inside &= lungs[box]  # against the pleura: flattened there, never into the wall
            if not inside.any():
                continue
            hu[box][inside] = rng.uniform(-60, 110)
            mask[box][inside] = 1
            count += 1
    sigma = rng.uniform(0.25, 1.0, 3) / spacing * 2.0
    sigma[2] *= rng.uniform(1.0, 2.0)  # thicker slices blur along z
    hu = ndimage.gaussian_filter(hu, sigma=sigma)
    white = rng.normal(0, 1, shape)
    if rng.random() < 0.5:
        white = ndimage.gaussian_filter(white, rng.uniform(0.5, 1.0))
        white /= max(float(white.std()), 1e-6)
    hu += rng.uniform(5, 60) * white + rng.uniform(-25, 25)
    return ChestCT(hu=hu.astype(np.float32), nodules=mask, count=count, spacing=spacing)


def radiograph_to_model(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """As the engine brings a 2D image to the model: resized (``fit = "resize"``, linear)."""
    out: np.ndarray = resample(image.astype(np.float32), size)
    return out
