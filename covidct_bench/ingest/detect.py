"""Is this panel a chest CT slice? A calibrated score from a few interpretable image features.

No pretrained network is needed (nor downloadable here): an axial chest CT has a property few other
figure images share — a grey, wider-than-tall body on a dark background, with two large dark holes
(the lungs) enclosed by brighter tissue, sharp lung borders and no colour. Plots, diagrams and
photographs fail on colour, white background or the holes; a chest X-ray fills its frame with a
tall body and soft lung borders; a brain CT is a taller oval without lung holes; microscopy is
coloured texture. ``features`` computes these on a 128-px copy of the panel's chest crop and
``ct_score`` combines them with a logistic model; ``fit_detector`` re-derives its coefficients
from synthetic figures (``covidct_bench.data.figures``), which is how ``COEF`` was obtained.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu


SIZE = 128
FEATURES = ("colour", "white", "dark", "lungs", "lung_count", "lung_dark", "lung_texture", "edges", "aspect")
# logistic coefficients over FEATURES, from fit_detector() (synthetic panels, n=300, seed=0, C=0.1 on
# standardised features, folded back to raw features). C trades synthetic X-ray/plot rejection
# against recall on real paper CTs (see the ingest issue note); refit after changing ``features``.
COEF = (-1.3806, -0.2141, 7.9429, 2.1021, -0.1441, -1.7784, 15.4298, 0.8162, 0.6294)
INTERCEPT = -3.6825
THRESHOLD = 0.5


def _lungs(gray: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Large dark regions that do not reach a corner of the crop (the background does; lungs do not)."""
    lab, n = ndi.label(dark)
    if n == 0:
        return np.zeros_like(dark)
    c = SIZE // 12
    corner_ids = np.unique(np.concatenate([lab[:c, :c].ravel(), lab[:c, -c:].ravel(),
                                           lab[-c:, :c].ravel(), lab[-c:, -c:].ravel()]))
    sizes = np.bincount(lab.ravel())
    keep = np.flatnonzero(sizes > 0.03 * dark.size)
    keep = keep[(keep != 0) & ~np.isin(keep, corner_ids)]
    return np.isin(lab, keep)


def features(rgb: np.ndarray) -> dict[str, float]:
    """Scale-free features of one panel crop (RGB or grey uint8)."""
    if rgb.ndim == 2:
        rgb = rgb[..., None].repeat(3, axis=2)
    rgb = np.ascontiguousarray(rgb[..., :3])
    h, w = rgb.shape[:2]
    small = np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), Image.BILINEAR)).astype(np.int16)
    gray = small.mean(axis=2)
    chroma = small.max(axis=2) - small.min(axis=2)
    bright = gray >= np.percentile(gray, 90) * 0.75 if gray.max() > 20 else np.zeros(gray.shape, bool)
    tissue = float(gray[bright].mean()) if bright.any() else 255.0
    inside = gray[gray > 0.15 * tissue]  # Otsu between lungs and tissue, the black background left out
    cut = threshold_otsu(inside) if inside.size and np.ptp(inside) > 8 else 0.5 * tissue
    dark = gray < min(cut, 0.6 * tissue)
    lungs = _lungs(gray, ndi.binary_opening(dark, iterations=1))
    lab, n = ndi.label(lungs)
    lung_level = float(gray[lungs].mean()) if lungs.any() else tissue
    hp = np.abs(gray - ndi.gaussian_filter(gray, 2.0))
    g = ndi.gaussian_filter(gray, 0.7)
    mag = np.hypot(ndi.sobel(g, 0), ndi.sobel(g, 1))
    border = lungs ^ ndi.binary_erosion(lungs)
    return {
        "colour": float((chroma > 30).mean()),
        "white": float((gray >= 235).mean() * (chroma <= 30).mean()),
        "dark": float(dark.mean()),
        "lungs": float(lungs.mean()),
        "lung_count": float(min(n, 3)),
        "lung_dark": float(lung_level / max(tissue, 1.0)),
        "lung_texture": float(hp[lungs].mean() / max(tissue, 1.0)) if lungs.any() else 0.0,
        "edges": float((mag[border] > 0.4 * tissue).mean()) if border.any() else 0.0,
        "aspect": float(abs(np.log(w / h))),
    }


def _vector(f: dict[str, float]) -> np.ndarray:
    return np.array([f[k] for k in FEATURES], np.float64)


def ct_score(rgb: np.ndarray, feats: dict[str, float] | None = None) -> float:
    """Probability that ``rgb`` (a panel crop) is an axial chest CT slice."""
    f = feats if feats is not None else features(rgb)
    z = float(_vector(f) @ np.asarray(COEF) + INTERCEPT)
    return float(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))))


def training_set(n: int = 600, seed: int = 0, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic panels, cropped as ingest crops them: phantom CTs (both windows, paper-styled, tightly
    cropped, sometimes rotated) vs every non-CT kind in equal shares."""
    from covidct_bench.data import figures as F
    from covidct_bench.data.phantoms import paper_style
    from covidct_bench.ingest.panels import chest_crop

    rng = np.random.default_rng(seed)
    X, y = [], []
    for i in range(n):
        if i % 2 == 0:
            img = F.ct_slice(rng, bool(rng.random() < 0.5), size, 128)
            if rng.random() < 0.4:
                styled, _, _ = paper_style(img[..., 0], [], rng, img[..., 0] < 60)
                img = np.asarray(styled.convert("RGB"))
            if rng.random() < 0.15:
                img = np.rot90(img)
            label = 1
        else:
            kind = F.NON_CT_KINDS[(i // 2) % len(F.NON_CT_KINDS)]
            img = F.NON_CT[kind](rng, size)
            label = 0
        gray = img.mean(axis=2).astype(np.uint8)
        x0, y0, x1, y1 = chest_crop(gray)
        if label == 1 and rng.random() < 0.5:  # tighter crops, as many paper figures are
            h, w = y1 - y0, x1 - x0
            x0, x1 = x0 + int(rng.uniform(0, 0.12) * w), x1 - int(rng.uniform(0, 0.12) * w)
            y0, y1 = y0 + int(rng.uniform(0, 0.12) * h), y1 - int(rng.uniform(0, 0.12) * h)
        X.append(_vector(features(img[y0:y1, x0:x1])))
        y.append(label)
    return np.array(X), np.array(y)


def fit_detector(n: int = 300, seed: int = 0, C: float = 0.1) -> tuple[np.ndarray, float]:
    """Fit the logistic model on standardised synthetic features; returns raw-feature (coefficients, intercept)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = training_set(n, seed)
    scaler = StandardScaler().fit(X)
    model = LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(X), y)
    coef = model.coef_[0] / scaler.scale_
    return coef, float(model.intercept_[0] - (coef * scaler.mean_).sum())
