"""Multi-panel figures -> single panels (recursive XY-cut), and the chest crop of one panel.

``split_panels`` cuts a figure along white or black gutters found in its row and column projection
profiles, recursively, the way a human splits "(A) (B) (C)" figures. ``chest_crop`` is the paper's
"threshold segmentation and convex hull detection": Otsu threshold, largest component with its
holes (the lungs) filled, convex hull, bounding box plus a small margin; letters, arrows and
margins outside the body fall away.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops
from skimage.morphology import convex_hull_image

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (pixels, end exclusive)

WHITE, BLACK, FLAT = 232, 28, 24  # a gutter line is near-white or near-black and nearly flat


def _gutter_lines(gray: np.ndarray, axis: int) -> np.ndarray:
    """True for each row (axis=1) or column (axis=0) that is a blank white or black line."""
    lo, hi = gray.min(axis=axis), gray.max(axis=axis)
    return ((lo >= WHITE) | (hi <= BLACK)) & (hi.astype(np.int16) - lo <= FLAT)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2], edges[1::2]))


def _content_spans(gray: np.ndarray, axis: int, min_gutter: int) -> list[tuple[int, int]]:
    """Spans of non-gutter lines along one axis, separated by gutters at least ``min_gutter`` wide."""
    blank = _gutter_lines(gray, axis=1 - axis)
    spans = []
    for a, b in _runs(~blank):
        if spans and a - spans[-1][1] < min_gutter:
            spans[-1] = (spans[-1][0], b)  # gutter too thin (a line inside a panel): keep together
        else:
            spans.append((a, b))
    return spans


def split_panels(gray: np.ndarray, min_gutter: int = 3, min_side: float = 0.08, min_px: int = 32,
                 max_depth: int = 6) -> list[Box]:
    """Panel boxes of a figure in reading order (rows top to bottom, then left to right).

    Leaves smaller than ``min_side`` of the figure's shorter side (or ``min_px``) are dropped: they
    are letters, scale bars or strips of background.
    """
    H, W = gray.shape
    floor = max(min_px, int(min_side * min(H, W)))
    out: list[Box] = []

    def cut(x0: int, y0: int, x1: int, y1: int, depth: int) -> None:
        sub = gray[y0:y1, x0:x1]
        rows = _content_spans(sub, 0, min_gutter)
        cols = _content_spans(sub, 1, min_gutter)
        if not rows or not cols:
            return
        # trim blank borders first
        ty0, ty1, tx0, tx1 = rows[0][0], rows[-1][1], cols[0][0], cols[-1][1]
        if (ty0, ty1, tx0, tx1) != (0, y1 - y0, 0, x1 - x0):
            return cut(x0 + tx0, y0 + ty0, x0 + tx1, y0 + ty1, depth)
        if depth < max_depth and len(rows) > 1:
            for a, b in rows:
                cut(x0, y0 + a, x1, y0 + b, depth + 1)
        elif depth < max_depth and len(cols) > 1:
            for a, b in cols:
                cut(x0 + a, y0, x0 + b, y1, depth + 1)
        elif (x1 - x0) >= floor and (y1 - y0) >= floor and sub.std() > 2.0:
            out.append((x0, y0, x1, y1))

    cut(0, 0, W, H, 0)
    return out


def body_mask(gray: np.ndarray) -> np.ndarray:
    """The largest bright component (Otsu threshold) with its holes filled; empty if the image is flat."""
    if gray.max() - gray.min() < 16:
        return np.zeros(gray.shape, bool)
    fg = gray > threshold_otsu(gray)
    lab = label(fg, connectivity=1)
    if lab.max() == 0:
        return np.zeros(gray.shape, bool)
    largest = np.argmax(np.bincount(lab.ravel())[1:]) + 1
    return ndi.binary_fill_holes(lab == largest)


def chest_crop(gray: np.ndarray, margin: float = 0.02, min_fraction: float = 0.1) -> Box:
    """Crop box of the body: Otsu threshold, largest component, convex hull, bbox + ``margin``.

    Returns the whole image when no component covers ``min_fraction`` of it (nothing to crop to).
    """
    H, W = gray.shape
    step = max(1, max(H, W) // 256)  # hull on a reduced grid: same box within a pixel or two of ``step``
    small = gray[::step, ::step]
    body = body_mask(small)
    if body.sum() < min_fraction * body.size:
        return (0, 0, W, H)
    hull = convex_hull_image(body)
    r0, c0, r1, c1 = regionprops(hull.astype(np.uint8))[0].bbox
    my, mx = int(margin * H), int(margin * W)
    return (max(0, c0 * step - mx), max(0, r0 * step - my), min(W, c1 * step + mx), min(H, r1 * step + my))
