"""Lung masks for any manifest, kept as named *mask sets* beside the dataset.

Our datasets have no manual lung masks (the phantoms' ground truth excepted), so:

- ``classical_lung_mask`` segments the lungs with classical image processing (scikit-image): Otsu
  threshold of the smoothed slice, dark components that do not touch the image border (the air
  outside the body does), the two largest of them kept, holes filled (vessels) and closed;
- the residual U-Net (``train segment``) learns from those masks; its predictions are another set.

A mask set lives in ``<dataset>/masks/<set>/``: one PNG (0/255) per image, ``index.parquet``
(``image_id, lung_mask_path``) and ``masks.json`` (how it was made); the folder is written beside
and swapped in whole. ``with_lung_masks(df, set)`` points the manifest's ``lung_mask_path`` at a set,
so everything downstream (cache, training) just reads ``lung_mask_path``; ``manifest`` keeps the
manifest's own masks (the phantoms' true masks).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

from covidct_bench.data.images import load_gray
from covidct_bench.data.manifest import absolute
from covidct_bench.errors import BenchError
from covidct_bench.io import staging_dir

MANIFEST_MASKS = "manifest"
_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def classical_lung_mask(img: np.ndarray, min_area: float = 0.005, closing: float = 0.03) -> np.ndarray:
    """Boolean lung mask of a grey axial CT slice (uint8, lung window: lungs dark, body bright)."""
    g = filters.gaussian(img.astype(np.float32) / 255.0, sigma=max(0.5, img.shape[0] / 256))
    if g.max() - g.min() < 1e-3:
        return np.zeros(img.shape, bool)
    dark = g < filters.threshold_otsu(g)
    inner = segmentation.clear_border(dark)
    if inner.sum() < min_area * img.size:  # lungs cut by the image border (tight paper crops)
        body = ndi.binary_fill_holes(~dark)
        inner = dark & ndi.binary_erosion(body, morphology.disk(2)) if body.any() else dark
    # close first: vessels and lesions split a lung into pieces, more so at low resolution
    radius = max(1, round(img.shape[0] * closing))
    inner = ndi.binary_closing(np.pad(inner, radius), morphology.disk(radius))[radius:-radius, radius:-radius]
    lab = measure.label(inner)
    regions = sorted((r for r in measure.regionprops(lab) if r.area >= min_area * img.size),
                     key=lambda r: r.area, reverse=True)[:2]
    mask = np.isin(lab, [r.label for r in regions])
    return ndi.binary_fill_holes(mask)


def set_dir(df: pd.DataFrame, name: str) -> Path:
    if not _SET_NAME.match(name) or name == MANIFEST_MASKS:
        raise BenchError(f"--set: {name!r} is not a valid mask-set name (letters, digits, _ . -; not 'manifest')")
    return Path(df.attrs.get("root", ".")) / "masks" / name


def write_mask_set(df: pd.DataFrame, name: str, masks: Iterable[np.ndarray], meta: dict,
                   progress: Callable[[int], None] | None = None) -> Path:
    """Write one mask per manifest row (in order) as set ``name``; returns the set folder."""
    out = set_dir(df, name)
    rows = []
    with staging_dir(out) as tmp:
        for i, (image_id, m) in enumerate(zip(df["image_id"], masks)):
            Image.fromarray(np.asarray(m, bool).astype(np.uint8) * 255).save(tmp / f"{i:06d}.png")
            rows.append({"image_id": str(image_id), "lung_mask_path": f"masks/{name}/{i:06d}.png"})
            if progress:
                progress(1)
        if len(rows) != len(df):
            raise BenchError(f"mask set {name}: {len(rows)} masks for {len(df)} images")
        pd.DataFrame(rows).to_parquet(tmp / "index.parquet", index=False)
        (tmp / "masks.json").write_text(json.dumps({"set": name, "images": len(rows), **meta}, indent=2))
    return out


def classical_masks(df: pd.DataFrame) -> Iterable[np.ndarray]:
    for path, rel in zip(absolute(df), df["path"]):
        yield classical_lung_mask(load_gray(path, rel))


def with_lung_masks(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """``df`` with ``lung_mask_path`` pointing at mask set ``name`` (``manifest``: unchanged)."""
    if name == MANIFEST_MASKS:
        return df
    folder = set_dir(df, name)
    index = folder / "index.parquet"
    if not index.is_file():
        raise BenchError(f"--lung-masks: no mask set {name!r} in {folder.parent} (make it with "
                         f"`covidct-bench data lung-masks {df['dataset'].iloc[0] if len(df) else 'NAME'} --set {name}`)")
    paths = dict(pd.read_parquet(index)[["image_id", "lung_mask_path"]].itertuples(index=False))
    missing = [i for i in df["image_id"] if i not in paths]
    if missing:
        raise BenchError(f"--lung-masks: mask set {name!r} has no mask for image_id {missing[0]!r} "
                         f"({len(missing)} missing); rebuild it")
    out = df.copy()
    out.attrs = dict(df.attrs)
    out["lung_mask_path"] = out["image_id"].map(paths)
    return out
