"""Synthetic paper figures: phantom CT panels, multi-panel composites and the non-CT images papers hold.

Every generator takes a ``numpy.random.Generator`` and returns an RGB ``uint8`` array, so a corpus is
reproducible from its seed. The non-CT kinds are the confusers a chest-CT detector must reject:
line/bar plots (matplotlib), flow diagrams, chest X-ray-like radiographs, brain CT-like slices,
stained microscopy and colour photographs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from covidct_bench.data.phantoms import render_slice, sample_lesions, sample_patient, to_uint8

NON_CT_KINDS = ("plot", "diagram", "xray", "brain_ct", "microscopy", "photo")


def _font(size: int):
    try:
        return ImageFont.load_default(size=max(8, size))
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _upscale(gray: np.ndarray, size: int) -> np.ndarray:
    if gray.shape[0] == size:
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BICUBIC))


def ct_slice(rng: np.random.Generator, positive: bool, size: int = 384, render: int = 192,
             window: str | None = None) -> np.ndarray:
    """One phantom chest-CT slice (grey, as RGB), rendered at ``render`` px and upsampled to ``size``.

    ``window``: "mediastinal" (soft tissue grey, lungs black) or "lung" (soft tissue saturated white,
    lungs dark grey with vessels — how most paper figures show COVID-19 CT); random when None.
    """
    anat, les, noise = (np.random.default_rng(int(s)) for s in rng.integers(2**31, size=3))
    p = sample_patient(anat)
    if positive:
        p.lesions = sample_lesions(les)
    img, _, _ = render_slice(p, float(rng.uniform(0.3, 0.7)), render, noise)
    window = window or ("lung" if rng.random() < 0.5 else "mediastinal")
    if window == "lung":
        img = img / rng.uniform(0.35, 0.45)
    return _rgb(_upscale(to_uint8(img), size))


def plot(rng: np.random.Generator, size: int = 384) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size / 100, size / 100 * rng.uniform(0.6, 0.9)), dpi=100)
    ax = fig.add_subplot()
    x = np.arange(int(rng.integers(5, 30)))
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 4))):
            ax.plot(x, np.cumsum(rng.normal(1, 2, len(x))), marker="o" if rng.random() < 0.5 else None)
    else:
        ax.bar(x[:10], rng.uniform(1, 10, len(x[:10])), color=rng.uniform(0, 1, 3))
    ax.set_xlabel("days since onset"), ax.set_ylabel("cases")
    ax.set_title(["Incidence", "Lymphocyte count", "CT score", "ROC"][int(rng.integers(4))])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return np.asarray(Image.open(buf).convert("RGB"))


def diagram(rng: np.random.Generator, size: int = 384) -> np.ndarray:
    w, h = size, int(size * rng.uniform(0.5, 0.8))
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    n = int(rng.integers(3, 6))
    boxes = []
    for i in range(n):
        x0 = int(10 + i * (w - 20) / n)
        y0 = int(rng.uniform(0.2, 0.5) * h)
        box = (x0, y0, x0 + int((w - 20) / n * 0.7), y0 + int(h * 0.25))
        d.rectangle(box, fill=tuple(int(c) for c in rng.integers(120, 256, 3)), outline="black", width=2)
        d.text((box[0] + 5, box[1] + 5), ["Input", "Conv", "Pool", "Dense", "Output"][i % 5], fill="black",
               font=_font(size // 30))
        boxes.append(box)
    for a, b in zip(boxes, boxes[1:]):
        y = (a[1] + a[3]) // 2
        d.line([(a[2], y), (b[0], y)], fill="black", width=2)
    return np.asarray(im)


def xray(rng: np.random.Generator, size: int = 384) -> np.ndarray:
    """A frontal chest radiograph look-alike: bright body filling the frame, dark lungs, ribs, spine."""
    h, w = int(size * rng.uniform(1.0, 1.2)), size
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = 0.55 + 0.15 * yy + 0.05 * rng.standard_normal()
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.45) / 0.33) ** 2 < 1
        img = np.where(lung, img - 0.3, img)
    for k in range(8):  # ribs
        y = 0.2 + k * 0.08
        img = img + 0.12 * np.exp(-((yy - y - 0.08 * np.abs(xx - 0.5)) / 0.012) ** 2)
    img = img + 0.35 * np.exp(-((xx - 0.5) / 0.05) ** 2)  # spine / mediastinum
    img = ndi.gaussian_filter(img, size / 120) + 0.02 * rng.standard_normal(img.shape)
    return _rgb(to_uint8(np.clip(img, 0, 1)))


def brain_ct(rng: np.random.Generator, size: int = 384) -> np.ndarray:
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    ry, rx = rng.uniform(0.8, 0.9), rng.uniform(0.62, 0.72)
    r = (xx / rx) ** 2 + (yy / ry) ** 2
    img = np.where(r < 1, 0.45, 0.0)
    img = np.where((r < 1) & (r > 0.86), 0.95, img)  # skull
    for cx in (-0.12, 0.12):  # ventricles
        img = np.where(((xx - cx) / 0.06) ** 2 + ((yy + 0.05) / 0.22) ** 2 < 1, 0.18, img)
    img = ndi.gaussian_filter(img, size / 200) + 0.02 * rng.standard_normal(img.shape)
    return _rgb(to_uint8(np.clip(img, 0, 1)))


def microscopy(rng: np.random.Generator, size: int = 384) -> np.ndarray:
    base = np.array([235, 190, 215], float) + rng.normal(0, 8, 3)
    img = np.ones((size, size, 3)) * base
    tex = ndi.gaussian_filter(rng.standard_normal((size, size)), 4)
    img += 40 * tex[..., None] * np.array([0.3, 1.0, 0.6])
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(30, 80))):
        cy, cx, rad = rng.uniform(0, size, 2).tolist() + [rng.uniform(4, 12)]
        nucleus = (yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2
        img[nucleus] = np.array([90, 60, 150]) + rng.normal(0, 10, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def photo(rng: np.random.Generator, size: int = 384) -> np.ndarray:
    h = int(size * rng.uniform(0.6, 0.8))
    yy, xx = np.mgrid[0:h, 0:size] / np.array([h, size])[:, None, None]
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0 * (1 - yy[..., None]) + c1 * yy[..., None]
    im = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = rng.uniform(0, size), rng.uniform(0, h)
        d.ellipse((x0, y0, x0 + rng.uniform(20, size / 2), y0 + rng.uniform(20, h / 2)),
                  fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    arr = ndi.gaussian_filter(np.asarray(im).astype(float), (1.5, 1.5, 0)) + rng.normal(0, 6, (h, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


NON_CT = {"plot": plot, "diagram": diagram, "xray": xray, "brain_ct": brain_ct, "microscopy": microscopy,
          "photo": photo}


@dataclass
class Composite:
    """A figure image and where its panels are: ``boxes[k] = (x0, y0, x1, y1)`` in image pixels."""

    image: np.ndarray
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def composite(panels: list[np.ndarray], cols: int, rng: np.random.Generator, gutter: int | None = None,
              background: int | None = None, letters: bool = True) -> Composite:
    """Tile equally sized panels on a grid with white or black gutters; letters A, B, ... in each panel."""
    ph, pw = panels[0].shape[:2]
    rows = -(-len(panels) // cols)
    g = int(gutter if gutter is not None else rng.integers(6, 18))
    bg = int(background if background is not None else (255 if rng.random() < 0.6 else 0))
    H, W = rows * ph + (rows + 1) * g, cols * pw + (cols + 1) * g
    canvas = np.full((H, W, 3), bg, np.uint8)
    boxes = []
    for k, p in enumerate(panels):
        r, c = divmod(k, cols)
        y0, x0 = g + r * (ph + g), g + c * (pw + g)
        canvas[y0:y0 + ph, x0:x0 + pw] = p
        boxes.append((x0, y0, x0 + pw, y0 + ph))
    if letters:
        im = Image.fromarray(canvas)
        d = ImageDraw.Draw(im)
        for k, (x0, y0, _, _) in enumerate(boxes):
            d.text((x0 + pw // 30 + 2, y0 + ph // 30 + 2), "ABCDEFGH"[k], fill=(255, 255, 255), font=_font(pw // 12))
        canvas = np.asarray(im)
    return Composite(canvas, boxes)


def with_margin(img: np.ndarray, rng: np.random.Generator) -> Composite:
    """A single-panel figure: the image on a white margin, sometimes with an arrow on it."""
    h, w = img.shape[:2]
    m = int(rng.integers(0, max(1, w // 16)))
    canvas = np.full((h + 2 * m, w + 2 * m, 3), 255, np.uint8)
    canvas[m:m + h, m:m + w] = img
    if rng.random() < 0.5:
        im = Image.fromarray(canvas)
        d = ImageDraw.Draw(im)
        tx, ty = m + w * rng.uniform(0.3, 0.7), m + h * rng.uniform(0.35, 0.65)
        d.line([(tx - w * 0.12, ty - h * 0.1), (tx, ty)], fill=(255, 255, 0), width=max(2, w // 120))
        canvas = np.asarray(im)
    return Composite(canvas, [(m, m, m + w, m + h)])
