"""Synthetic chest-CT phantoms: the embedded default dataset for tests and the demo.

Each synthetic patient has one anatomy (body outline with a fat layer, ribs, spine, aorta, heart,
two lungs with vessels and airway texture) sampled once and sliced at several heights. Positives
get ground-glass opacities (GGO: a haze that keeps the vessels visible) and consolidations (dense,
soft-tissue-like) placed with a subpleural preference; negatives get none.

Fairness by construction: anatomy, noise and paper-style degradation come from random streams that
do not depend on the label; the label only decides whether the lesion stream is drawn. Rendering a
positive patient with its lesions removed gives the negative image of the same patient, identical
outside the (blurred) lesions — a test checks this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi
from skimage.draw import disk as draw_disk

# Display intensities (lung window, 0..1)
AIR, LUNG, FAT, SOFT, VESSEL, HEART, BONE = 0.0, 0.07, 0.33, 0.48, 0.46, 0.55, 0.95


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    return np.meshgrid(ax, ax, indexing="ij")  # yy, xx


def blob(yy, xx, cy, cx, ry, rx, theta=0.0, wobble=()):
    """Boolean mask of an ellipse whose radius is perturbed by a few Fourier harmonics."""
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u, v = dx * c + dy * s, -dx * s + dy * c
    r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    ang = np.arctan2(v / ry, u / rx)
    rad = np.ones_like(r)
    for k, (amp, phase) in enumerate(wobble, start=2):
        rad = rad + amp * np.cos(k * ang + phase)
    return r <= rad


@dataclass
class Lesion:
    kind: str  # "ggo" or "consolidation"
    side: int  # -1 right lung (image left), +1 left lung
    u: float  # position inside the lung, in lung-relative coordinates (-1..1)
    v: float
    z: float  # centre height (0..1)
    radius: float  # in normalised image units
    z_extent: float
    density: float
    seed: int


@dataclass
class Patient:
    """Anatomy parameters of one synthetic patient (label-independent) plus its lesions."""

    body: tuple
    fat: float
    lungs: list
    heart: tuple
    vessels: np.ndarray
    texture_seed: int
    lesions: list[Lesion] = field(default_factory=list)


def sample_patient(rng: np.random.Generator) -> Patient:
    body = (rng.uniform(0.0, 0.06), 0.0, rng.uniform(0.58, 0.68), rng.uniform(0.80, 0.92),
            tuple((rng.uniform(0.0, 0.03), rng.uniform(0, 2 * np.pi)) for _ in range(3)))
    lungs = []
    for side in (-1, 1):
        lungs.append((side, rng.uniform(0.40, 0.46), rng.uniform(0.40, 0.47), rng.uniform(0.27, 0.32),
                      side * rng.uniform(-0.15, 0.05),
                      tuple((rng.uniform(0.0, 0.05), rng.uniform(0, 2 * np.pi)) for _ in range(3))))
    heart = (rng.uniform(0.08, 0.14), rng.uniform(0.04, 0.10), rng.uniform(0.15, 0.19), rng.uniform(0.17, 0.22))
    vessels = _vessel_tree(rng)
    return Patient(body=body, fat=rng.uniform(0.03, 0.06), lungs=lungs, heart=heart, vessels=vessels,
                   texture_seed=int(rng.integers(2**31)))


def _vessel_tree(rng: np.random.Generator) -> np.ndarray:
    """Branching random walks from each hilum: rows of (side, u, v, radius) in lung coordinates."""
    pts = []
    for side in (-1, 1):
        stack = [(0.55 * side * -1, 0.1, rng.uniform(-np.pi, np.pi), 0.035) for _ in range(int(rng.integers(6, 9)))]
        while stack and len(pts) < 900:
            u, v, ang, r = stack.pop()
            while r > 0.006 and abs(u) < 1.1 and abs(v) < 1.1:
                pts.append((side, u, v, r))
                ang += rng.normal(0.0, 0.35)
                u, v = u + 0.06 * np.cos(ang) * side, v + 0.06 * np.sin(ang)
                r *= rng.uniform(0.88, 0.97)
                if rng.random() < 0.18:
                    stack.append((u, v, ang + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9), r * 0.75))
    return np.asarray(pts, np.float32)


def sample_lesions(rng: np.random.Generator) -> list[Lesion]:
    n = int(rng.integers(2, 6))
    out = []
    for _ in range(n):
        # subpleural preference: positions pushed towards the lung rim
        ang = rng.uniform(0, 2 * np.pi)
        rad = np.sqrt(rng.beta(3.0, 1.2)) * 0.8
        out.append(Lesion(kind="consolidation" if rng.random() < 0.35 else "ggo",
                          side=int(rng.choice([-1, 1])), u=float(rad * np.cos(ang)), v=float(rad * np.sin(ang)),
                          z=rng.uniform(0.15, 0.85), radius=rng.uniform(0.07, 0.16),
                          z_extent=rng.uniform(0.25, 0.6), density=rng.uniform(0.16, 0.26),
                          seed=int(rng.integers(2**31))))
    return out


def _smooth_noise(shape, sigma, seed):
    field_ = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), sigma)
    return field_ / (field_.std() + 1e-6)


def render_slice(p: Patient, z: float, size: int, noise_rng: np.random.Generator,
                 with_lesions: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axial slice at height ``z`` (0 apex .. 1 base).

    Returns ``image`` (float32 0..1), ``lung`` (bool) and ``lesion`` (uint8: 0 none, 1 GGO,
    2 consolidation). ``noise_rng`` is consumed identically whatever the lesions are.
    """
    yy, xx = _grid(size)
    px = 2.0 / size  # one pixel in normalised units
    img = np.full((size, size), AIR, np.float32)

    by, bx, ry, rx, bw = p.body
    body = blob(yy, xx, by, bx, ry, rx, 0.0, bw)
    inner = blob(yy, xx, by, bx, ry - p.fat, rx - p.fat, 0.0, bw)
    img[body] = FAT
    img[inner] = SOFT
    # ribs: small bright ellipses just inside the fat layer
    for a in np.linspace(-np.pi * 0.95, np.pi * 0.95, 14):
        if abs(np.sin(a)) > 0.97 and np.sin(a) < 0:  # none over the sternum
            continue
        cy, cx = by + (ry - p.fat - 0.04) * np.sin(a), bx + (rx - p.fat - 0.04) * np.cos(a)
        img[blob(yy, xx, cy, cx, 0.022, 0.035, a)] = BONE
    # spine (vertebral body, canal), aorta
    sy = by + ry * 0.62
    img[blob(yy, xx, sy, bx, 0.10, 0.10)] = BONE
    img[blob(yy, xx, sy, bx, 0.075, 0.075)] = 0.75
    img[blob(yy, xx, sy + 0.14, bx, 0.035, 0.04)] = SOFT - 0.05
    img[blob(yy, xx, sy - 0.14, bx + 0.12, 0.06, 0.06)] = HEART

    # lungs shrink towards apex and base
    scale = 0.72 + 0.28 * np.sin(np.pi * (0.1 + 0.8 * z))
    hy, hx, hry, hrx = p.heart
    hscale = 0.35 + 0.85 * z
    heart = blob(yy, xx, by + hy, bx + hx, hry * hscale, hrx * hscale)
    mediastinum = blob(yy, xx, by, bx, ry * 0.9, 0.10)
    lung = np.zeros((size, size), bool)
    lung_geom = {}
    for side, cxo, lry, lrx, theta, wob in p.lungs:
        cx, cy = bx + side * cxo * rx / 0.86, by - 0.03
        lung_geom[side] = (cy, cx, lry * scale, lrx * scale)
        lung |= blob(yy, xx, cy, cx, lry * scale, lrx * scale, theta, wob)
    lung &= inner & ~ndi.binary_dilation(heart | mediastinum, iterations=max(1, size // 64))
    img[heart] = HEART

    # parenchyma: lung density with a fine airway/alveolar texture
    tex = _smooth_noise((size, size), 1.2 * size / 256, p.texture_seed)
    lung_img = LUNG + 0.018 * tex
    # vessels: discs along the branching walks, in lung-relative coordinates
    vessel = np.zeros((size, size), np.float32)
    for side, u, v, r in p.vessels:
        cy, cx, lry, lrx = lung_geom[int(side)]
        py, pxx = (cy + v * lry + 0.02 * np.sin(7 * z + u * 5) + 1) / px, (cx + u * lrx + 1) / px
        rr, cc = draw_disk((py, pxx), max(0.6, r / px * 0.5), shape=vessel.shape)
        vessel[rr, cc] = 1.0
    vessel = ndi.gaussian_filter(vessel, 0.6 * size / 256)
    lung_img = lung_img + (VESSEL - LUNG) * np.clip(vessel * 1.5, 0, 1)
    # airway: trachea high up, main bronchi lower
    if z < 0.35:
        img[blob(yy, xx, by - 0.18, bx, 0.05, 0.05)] = LUNG * 0.5
    lesion = np.zeros((size, size), np.uint8)
    if with_lesions:
        for les in p.lesions:
            dz = (z - les.z) / les.z_extent
            if abs(dz) >= 1.0 or les.side not in lung_geom:
                continue
            cy, cx, lry, lrx = lung_geom[les.side]
            r = les.radius * np.sqrt(1.0 - dz**2)
            ly, lx = cy + les.v * lry, cx + les.u * lrx
            shape_noise = _smooth_noise((size, size), 3.0 * size / 256, les.seed)
            d = np.sqrt((yy - ly) ** 2 + (xx - lx) ** 2) / max(r, 2 * px)
            m = ((d + 0.25 * shape_noise) < 1.0) & lung
            if les.kind == "ggo":
                lung_img = np.where(m, lung_img + les.density * (0.85 + 0.15 * tex), lung_img)
                lesion[m & (lesion == 0)] = 1
            else:
                lung_img = np.where(m, SOFT - 0.04 + 0.02 * tex, lung_img)
                lesion[m] = 2
    img = np.where(lung, lung_img, img)

    # acquisition: blur + noise (noise drawn the same way whatever the content)
    img = ndi.gaussian_filter(img, noise_rng.uniform(0.5, 1.1) * size / 256)
    sigma = noise_rng.uniform(0.008, 0.025)
    img = img + sigma * noise_rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0), lung, lesion


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def paper_style(img: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator,
                lung: np.ndarray) -> tuple[Image.Image, list[np.ndarray], int]:
    """Degrade a slice as a figure in a paper is degraded: downscale, margins, arrows, letters, JPEG.

    Masks get the same margins so they stay aligned. Arrows point at random lung pixels, never
    preferentially at lesions, so they are no label shortcut. Returns (image, masks, jpeg quality).
    """
    h, w = img.shape
    pil = Image.fromarray(img)
    f = rng.uniform(0.45, 0.9)
    pil = pil.resize((max(8, int(w * f)), max(8, int(h * f))), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    # margins
    fill = 255 if rng.random() < 0.5 else 0
    t, b, l, r = (int(rng.uniform(0, 0.12) * s) for s in (h, h, w, w))
    canvas = Image.new("L", (w + l + r, h + t + b), fill)
    canvas.paste(pil, (l, t))
    masks = [np.pad(m, ((t, b), (l, r))) for m in masks]
    draw = ImageDraw.Draw(canvas)
    ys, xs = np.nonzero(lung)
    for _ in range(int(rng.integers(0, 3))):
        if len(ys) == 0:
            break
        i = int(rng.integers(len(ys)))
        ty, tx = ys[i] + t, xs[i] + l
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.08, 0.16) * w
        sy, sx = ty + length * np.sin(ang), tx + length * np.cos(ang)
        width = max(1, w // 100)
        draw.line([(sx, sy), (tx, ty)], fill=255, width=width)
        head = 0.04 * w
        for da in (0.4, -0.4):
            draw.line([(tx, ty), (tx + head * np.cos(ang + da), ty + head * np.sin(ang + da))], fill=255, width=width)
    if rng.random() < 0.8:
        letter = "ABCDEF"[int(rng.integers(6))]
        try:
            font = ImageFont.load_default(size=max(8, w // 10))
        except TypeError:  # Pillow without FreeType sizes
            font = ImageFont.load_default()
        corner = (int(rng.uniform(0.02, 0.08) * w) + l // 2, int(rng.uniform(0.02, 0.08) * h) + t // 2)
        draw.text(corner, letter, fill=255 - fill if fill else 255, font=font)
    quality = int(rng.integers(40, 91))
    return canvas, masks, quality
