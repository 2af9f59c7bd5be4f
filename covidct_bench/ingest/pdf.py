"""One PDF -> its figures: embedded raster images with their placement, caption, page, DOI (PyMuPDF).

A *figure* is a cluster of image placements that touch each other on a page plus the caption block
next to it: the nearest text block above or below that starts with "Figure N" / "Fig. N" / "FIG N"
/ "Fig N -" and overlaps it horizontally. Blocks that only look like captions are refused: a body
sentence ("Fig. 3. shows that ...": the first word after the number is lower case) and a list of
figures (several "Figure N" lines in one block, or dot leaders). Images are deduplicated by xref
(a logo on every page is read once) and never decoded when their declared size passes the pixel limit.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

from covidct_bench.ingest.captions import FIGURE_START

DOI = re.compile(r"\b(10\.\d{4,9}/[^\s\"<>,;]+)", re.I)
_AFTER_NUMBER = re.compile(r"^\s*(?:fig(?:ure)?s?|FIG(?:URE)?S?)\s*\.?\s*S?\d+[A-Za-z]?\s*[.:|\-‐–—,)]?\s*(\S+)", re.I)
_LEADERS = re.compile(r"\.{4,}|…{2,}|(?:\. ){4,}")


class DocumentError(Exception):
    """A document (or one of its images) that cannot be ingested; the message is the reason."""


@dataclass
class Placement:
    xref: int
    page: int
    rect: tuple[float, float, float, float]
    width: int
    height: int
    image: np.ndarray | None = None  # RGB uint8, decoded on demand


@dataclass
class Figure:
    page: int
    index: int  # order in the document
    placements: list[Placement]
    caption: str | None = None
    caption_rect: tuple[float, float, float, float] | None = None
    caption_position: str | None = None  # above | below


@dataclass
class Document:
    name: str
    sha256: str
    pages: int
    doi: str | None
    text: str
    figures: list[Figure] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # images refused (too large, undecodable): reasons


def open_pdf(data: bytes, name: str):
    import pymupdf

    if not data:
        raise DocumentError("empty file (0 bytes)")
    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise DocumentError("not a PDF (no %PDF header)")
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as e:  # MuPDF's FileDataError and friends
        raise DocumentError(f"unreadable PDF: {e}") from None
    if doc.needs_pass or doc.is_encrypted:
        raise DocumentError("encrypted PDF (needs a password)")
    if doc.is_repaired:
        raise DocumentError("damaged or truncated PDF (MuPDF had to repair its cross-reference table)")
    if doc.page_count == 0:
        raise DocumentError("PDF has no pages")
    return doc


def is_caption_start(text: str) -> bool:
    """A block that opens a figure caption (not a body sentence, not a list of figures)."""
    first = text.lstrip()
    if not FIGURE_START.match(first):
        return False
    m = _AFTER_NUMBER.match(first)
    if m and m.group(1)[:1].islower():
        return False  # "Fig. 3. shows that ..." is a sentence about the figure
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if sum(bool(FIGURE_START.match(ln)) for ln in lines) >= 2 or _LEADERS.search(text):
        return False  # a list of figures
    return True


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _clusters(rects: list[tuple[float, ...]], pad: float = 12.0) -> list[list[int]]:
    """Groups of placements whose rectangles (grown by ``pad``) touch: the parts of one figure."""
    parent = list(range(len(rects)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(rects):
        for j in range(i + 1, len(rects)):
            b = rects[j]
            if a[0] - pad < b[2] and b[0] - pad < a[2] and a[1] - pad < b[3] and b[1] - pad < a[3]:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(rects)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: (min(rects[i][1] for i in g), min(rects[i][0] for i in g)))


def _caption_for(box, blocks, used: set, max_gap: float):
    """Nearest caption block above or below ``box``; continuation blocks right below it are appended."""
    best = None
    for k, (x0, y0, x1, y1, text) in enumerate(blocks):
        if k in used or not is_caption_start(text):
            continue
        if _overlap(box[0], box[2], x0, x1) < 0.3 * min(box[2] - box[0], x1 - x0):
            continue
        below, above = y0 - box[3], box[1] - y1
        for gap, where in ((below, "below"), (above, "above")):
            if -3.0 <= gap <= max_gap and (best is None or gap < best[0]):
                best = (gap, k, where)
    if best is None:
        return None
    _, k, where = best
    used.add(k)
    x0, y0, x1, y1, text = blocks[k]
    for j in range(k + 1, len(blocks)):  # a caption split over several blocks
        bx0, by0, bx1, by1, btext = blocks[j]
        if j in used or not (0 <= by0 - y1 <= 6.0) or _overlap(x0, x1, bx0, bx1) <= 0 or FIGURE_START.match(btext):
            break
        used.add(j)
        text, y1 = text.rstrip() + " " + btext.strip(), by1
    return " ".join(text.split()), (x0, y0, x1, y1), where


def read_document(data: bytes, name: str, max_pixels: int = 50_000_000, min_side: int = 64,
                  max_gap: float = 40.0, decode: bool = True) -> Document:
    """Figures of one PDF, with decoded images (RGB) unless ``decode`` is False."""
    import pymupdf

    doc = open_pdf(data, name)
    texts, figures, skipped, seen = [], [], [], set()
    try:
        for page in doc:
            blocks = [(b[0], b[1], b[2], b[3], b[4]) for b in page.get_text("blocks") if b[6] == 0]
            texts.append(page.get_text("text"))
            placements = []
            for info in page.get_images(full=True):
                xref, w, h = info[0], info[2], info[3]
                if xref in seen:
                    continue
                seen.add(xref)
                if w < min_side or h < min_side:
                    continue  # icons, logos, rules
                rects = page.get_image_rects(xref)
                if not rects:
                    continue
                if w * h > max_pixels:
                    skipped.append({"page": page.number, "xref": xref,
                                    "reason": f"image {w}x{h} exceeds the pixel limit ({max_pixels})"})
                    continue
                r = rects[0]
                placements.append(Placement(xref, page.number, (r.x0, r.y0, r.x1, r.y1), w, h))
            used: set = set()
            for group in _clusters([p.rect for p in placements]):
                parts = [placements[i] for i in group]
                box = (min(p.rect[0] for p in parts), min(p.rect[1] for p in parts),
                       max(p.rect[2] for p in parts), max(p.rect[3] for p in parts))
                found = _caption_for(box, blocks, used, max_gap)
                fig = Figure(page.number, len(figures), parts)
                if found:
                    fig.caption, fig.caption_rect, fig.caption_position = found
                figures.append(fig)
        if decode:
            for fig in figures:
                for p in fig.placements:
                    try:
                        p.image = decode_image(doc, p.xref)
                    except Exception as e:  # a broken image stream: the rest of the document still counts
                        skipped.append({"page": p.page, "xref": p.xref, "reason": f"undecodable image: {e}"})
                fig.placements = [p for p in fig.placements if p.image is not None]
            figures = [f for f in figures if f.placements]
        text = "\n".join(texts)
        m = DOI.search("\n".join(texts[:2])) or DOI.search(text)
        doi = m.group(1).rstrip(".)]") if m else None
        return Document(name=name, sha256=hashlib.sha256(data).hexdigest(), pages=doc.page_count, doi=doi,
                        text=text, figures=figures, skipped=skipped)
    finally:
        doc.close()
        pymupdf.TOOLS.mupdf_warnings()  # drain, so one document's warnings do not leak into the next


def decode_image(doc, xref: int) -> np.ndarray:
    """RGB uint8 array of an image XObject (any colour space; alpha dropped)."""
    import pymupdf

    pix = pymupdf.Pixmap(doc, xref)
    if pix.alpha:
        pix = pymupdf.Pixmap(pix, 0)
    if pix.n != 3:
        pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
    arr = np.frombuffer(pix.samples, np.uint8).reshape(pix.h, pix.stride)[:, :pix.w * 3]
    return arr.reshape(pix.h, pix.w, 3).copy()


def citing_sentences(text: str, number: str | None, caption: str | None) -> str:
    """Body sentences that cite figure ``number`` (context for labelling when the caption is silent)."""
    if not number:
        return ""
    cite = re.compile(rf"\bfig(?:ure)?s?\.?\s*{re.escape(number)}(?![0-9])", re.I)
    flat = " ".join(text.split())
    if caption:
        flat = flat.replace(" ".join(caption.split()), " ")
    return " ".join(s for s in re.split(r"(?<=[.!?])\s+", flat) if cite.search(s))
