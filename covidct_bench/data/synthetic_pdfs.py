"""A synthetic corpus of preprint PDFs with a ground truth, for testing and benchmarking ingest.

``write_corpus(SynthPdfConfig(out=..., n=..., seed=...))`` writes ``doc-0000.pdf`` ... and
``ground_truth.json``. Each document has a title, a DOI line, body text (including sentences that
start with "Fig. N" and are not captions, and sometimes a list of figures next to a figure), and
figures: single and multi-panel phantom CTs with positive, negative, unclear and per-panel (mixed)
captions placed above or below, figures mixing CT with an X-ray panel, and non-CT figures (plots,
diagrams, X-ray-like, brain CT-like, microscopy, photos). A fraction of documents are "version 2"
of an earlier one: same DOI, the same figures re-encoded and rescaled (the duplicates dedup must find).

Ground truth per figure: page, number, kind, caption, caption position, label, age, sex, and per
panel its box in image pixels, ``is_ct``, label and sub-label letter.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from covidct_bench.data import figures as F
from covidct_bench.data.images import parallel_map
from covidct_bench.io import atomic_path

PAGE_W, PAGE_H, MARGIN = 595.0, 842.0, 56.0
BODY_SIZE, CAPTION_SIZE = 9.5, 8.5


class SynthPdfConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path
    n: int = Field(20, ge=1, le=100_000, description="number of PDFs")
    seed: int = 0
    panel_size: int = Field(384, ge=64, le=2048, description="pixels per CT panel side")
    render_size: int = Field(160, ge=64, le=1024, description="phantom render size before upsampling")
    duplicate_fraction: float = Field(0.1, ge=0.0, le=0.5, description="documents that are a v2 of an earlier one")
    threads: int | None = None


SENTENCES = [
    "Patients were admitted between January and March 2020 and followed until discharge.",
    "Chest CT was performed with the patient in the supine position at end-inspiration.",
    "Two radiologists reviewed all images independently and resolved disagreements by consensus.",
    "Lymphopenia and elevated C-reactive protein were common laboratory findings.",
    "The median time from symptom onset to the first CT examination was five days.",
    "Statistical analysis was performed with two-sided tests at a significance level of 0.05.",
    "Ground-glass opacities with a peripheral and posterior distribution were the dominant pattern.",
    "Follow-up scans showed partial absorption of the lesions after treatment.",
    "Informed consent was waived by the ethics committee for this retrospective study.",
    "Deep learning models were trained on slices from the training cohort only.",
]
DESC = {1: ["bilateral peripheral ground-glass opacities", "multifocal consolidation with air bronchograms",
            "crazy-paving pattern in the lower lobes", "subpleural ground-glass opacity"],
        0: ["lobar consolidation in the right lower lobe", "centrilobular nodules and tree-in-bud pattern",
            "clear lungs without opacities", "a cavitating lesion in the left upper lobe"]}
POSITIVE = ["with COVID-19 pneumonia", "with confirmed SARS-CoV-2 infection", "with novel coronavirus (2019-nCoV) pneumonia",
            "infected with COVID-19"]
NEGATIVE = ["with community-acquired pneumonia, negative for SARS-CoV-2 by RT-PCR", "with influenza A pneumonia",
            "with bacterial pneumonia (non-COVID)", "with a normal chest CT", "without COVID-19 (healthy control)"]
NON_CT_CAPTIONS = {
    "plot": ["Daily confirmed COVID-19 cases in the study region.", "Lymphocyte counts over time in the two groups.",
             "ROC curves of the models on the test set."],
    "diagram": ["Architecture of the proposed network.", "Flow chart of patient inclusion."],
    "xray": ["Chest radiograph of a patient with COVID-19 showing bilateral opacities.",
             "Frontal chest X-ray on admission."],
    "brain_ct": ["Brain CT of a patient with COVID-19 on day 12, without acute abnormality."],
    "microscopy": ["Histopathology of lung tissue (H&E staining) showing diffuse alveolar damage."],
    "photo": ["Photograph of the isolation ward used during the outbreak."],
}


def _sex_word(rng) -> tuple[str, str]:
    return ("man", "M") if rng.random() < 0.5 else ("woman", "F")


def _fig_label(rng, n: int) -> str:
    return [f"Figure {n}.", f"Fig. {n}.", f"FIG {n}.", f"Fig {n} -", f"Figure {n}:"][int(rng.integers(5))]


def _ct_caption(rng, n: int, label: int | None, panels: int) -> tuple[str, dict]:
    """Caption of a CT figure whose panels share one label (``None``: the caption does not say)."""
    age = int(rng.integers(21, 86))
    word, sex = _sex_word(rng)
    who = f"a {age}-year-old {word}" if rng.random() < 0.7 else "a patient"
    meta = {"age": age if "year-old" in who else None, "sex": sex if "year-old" in who else None}
    if label is None:
        text = f"{_fig_label(rng, n)} " + ["Representative chest CT images of " + who + ".",
                                          "Axial CT slices at the level of the carina in " + who + ".",
                                          "Transverse thin-section CT scans of " + who + "."][int(rng.integers(3))]
    else:
        cond = (POSITIVE if label == 1 else NEGATIVE)[int(rng.integers(len(POSITIVE if label == 1 else NEGATIVE)))]
        text = f"{_fig_label(rng, n)} Chest CT of {who} {cond}."
        if label == 1 and rng.random() < 0.4:
            day = int(rng.integers(1, 20))
            text += f" Images obtained on day {day} after symptom onset."
            meta["illness_day"] = day
    if panels > 1:
        pool = DESC[label if label is not None else int(rng.integers(2))]
        text += " " + " ".join(f"({'ABCDEFGH'[k]}) {pool[int(rng.integers(len(pool)))].capitalize()}."
                               for k in range(panels))
    elif label is not None:
        text += f" The scan shows {DESC[label][int(rng.integers(len(DESC[label])))]}."
    return text, meta


def _mixed_caption(rng, n: int, labels: list[int]) -> str:
    parts = []
    for k, lab in enumerate(labels):
        disease = "COVID-19 pneumonia" if lab == 1 else ["Influenza pneumonia", "Community-acquired pneumonia",
                                                        "Normal lungs"][int(rng.integers(3))]
        parts.append(f"({'abcdefgh'[k] if rng.random() < 0.3 else 'ABCDEFGH'[k]}) {disease}: "
                     f"{DESC[lab][int(rng.integers(len(DESC[lab])))]}.")
    return f"{_fig_label(rng, n)} Comparison of chest CT findings. " + " ".join(parts)


def plan_figure(rng: np.random.Generator, n: int, cfg: SynthPdfConfig) -> dict:
    """One figure: its image, panel boxes, caption and ground truth."""
    kind = rng.choice(["ct_single", "ct_multi", "ct_mixed", "ct_xray", "non_ct"], p=[0.25, 0.25, 0.1, 0.07, 0.33])
    size = cfg.panel_size
    slice_ = lambda pos: F.ct_slice(rng, pos, size, cfg.render_size)  # noqa: E731
    meta: dict = {"age": None, "sex": None}
    if kind == "non_ct":
        sub = str(rng.choice(F.NON_CT_KINDS))
        img = F.NON_CT[sub](rng, size)
        comp = F.with_margin(img, rng) if rng.random() < 0.5 else F.Composite(img, [(0, 0, img.shape[1], img.shape[0])])
        caption = f"{_fig_label(rng, n)} {NON_CT_CAPTIONS[sub][int(rng.integers(len(NON_CT_CAPTIONS[sub])))]}"
        panels = [{"box": comp.boxes[0], "is_ct": False, "label": None, "letter": None, "kind": sub}]
        return {"kind": sub, "image": comp.image, "caption": caption, "label": None, "panels": panels, **meta}
    if kind == "ct_single":
        label = [1, 0, None][int(rng.choice(3, p=[0.45, 0.35, 0.2]))]
        comp = F.with_margin(slice_(label == 1 if label is not None else rng.random() < 0.5), rng)
        caption, meta = _ct_caption(rng, n, label, 1)
        panels = [{"box": comp.boxes[0], "is_ct": True, "label": label, "letter": None, "kind": "ct"}]
        return {"kind": "ct", "image": comp.image, "caption": caption, "label": label, "panels": panels, **meta}
    count, cols = [(2, 2), (3, 3), (4, 2), (6, 3), (4, 4)][int(rng.integers(5))]
    if kind == "ct_mixed":
        labels = [1, 0] + [int(rng.integers(2)) for _ in range(count - 2)]
        rng.shuffle(labels)
        comp = F.composite([slice_(lab == 1) for lab in labels], cols, rng)
        caption = _mixed_caption(rng, n, labels)
        panels = [{"box": b, "is_ct": True, "label": lab, "letter": "ABCDEFGH"[k], "kind": "ct"}
                  for k, (b, lab) in enumerate(zip(comp.boxes, labels))]
        return {"kind": "ct", "image": comp.image, "caption": caption, "label": None, "panels": panels, **meta}
    label = [1, 0, None][int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
    positive = label == 1 if label is not None else rng.random() < 0.5
    if kind == "ct_xray":  # panel A is a radiograph, the rest CT
        imgs = [F.xray(rng, size)[:size]] + [slice_(positive) for _ in range(count - 1)]
        kinds = ["xray"] + ["ct"] * (count - 1)
    else:
        imgs, kinds = [slice_(positive) for _ in range(count)], ["ct"] * count
    comp = F.composite(imgs, cols, rng)
    caption, meta = _ct_caption(rng, n, label, count)
    panels = [{"box": b, "is_ct": k == "ct", "label": label, "letter": "ABCDEFGH"[i], "kind": k}
              for i, (b, k) in enumerate(zip(comp.boxes, kinds))]
    return {"kind": "ct", "image": comp.image, "caption": caption, "label": label, "panels": panels, **meta}


def plan_document(cfg: SynthPdfConfig, i: int) -> dict:
    rng = np.random.default_rng([cfg.seed, i])
    figs = [plan_figure(rng, k + 1, cfg) for k in range(int(rng.integers(1, 5)))]
    doi = f"10.1101/2020.{int(rng.integers(1, 13)):02d}.{int(rng.integers(1, 29)):02d}.{int(rng.integers(10**7, 10**8))}"
    return {"doi": doi, "figures": figs, "list_of_figures": bool(rng.random() < 0.3), "layout_seed": i}


def _encode(img: np.ndarray, rng: np.random.Generator, rescale: float = 1.0) -> bytes:
    pil = Image.fromarray(img)
    if rescale != 1.0:
        pil = pil.resize((max(8, int(pil.width * rescale)), max(8, int(pil.height * rescale))), Image.BILINEAR)
    buf = io.BytesIO()
    if rng.random() < 0.5:
        pil.save(buf, "JPEG", quality=int(rng.integers(75, 95)))
    else:
        pil.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


class _Writer:
    """Flows text and figures down single-column pages."""

    def __init__(self, doc):
        self.doc, self.page, self.y = doc, None, PAGE_H
        self.width = PAGE_W - 2 * MARGIN

    def new_page(self):
        self.page = self.doc.new_page(width=PAGE_W, height=PAGE_H)
        self.y = MARGIN

    def text_height(self, text: str, size: float, width: float) -> float:
        import pymupdf

        words, lines, cur = text.split(), 1, 0.0
        space = pymupdf.get_text_length(" ", fontsize=size)
        for w in words:
            lw = pymupdf.get_text_length(w, fontsize=size)
            if cur and cur + space + lw > width:
                lines, cur = lines + 1, lw
            else:
                cur += (space if cur else 0) + lw
        return lines * size * 1.25 + size * 0.6

    def text(self, text: str, size: float = BODY_SIZE, gap: float = 8.0, x0: float | None = None,
             width: float | None = None):
        import pymupdf

        width = width or self.width
        h = self.text_height(text, size, width)
        if self.page is None or self.y + h > PAGE_H - MARGIN:
            self.new_page()
        x0 = MARGIN if x0 is None else x0
        rect = pymupdf.Rect(x0, self.y, x0 + width, self.y + h)
        while (spare := self.page.insert_textbox(rect, text, fontsize=size, fontname="helv")) < 0:
            rect.y1 += -spare + size  # our estimate was short: nothing was written, grow and retry
        self.y = rect.y1 + gap
        return rect


def write_document(cfg: SynthPdfConfig, i: int, plan: dict, version2: bool) -> dict:
    """Render one PDF; returns its ground truth."""
    import pymupdf

    rng = np.random.default_rng([cfg.seed, i, 7])
    doc = pymupdf.open()
    w = _Writer(doc)
    w.text(f"Chest CT findings in a cohort study {i}{' (version 2)' if version2 else ''}", size=15, gap=6)
    w.text(f"medRxiv preprint doi: https://doi.org/{plan['doi']}", size=8, gap=12)
    truth_figs = []
    numbers = list(range(1, len(plan["figures"]) + 1))
    if plan["list_of_figures"]:
        lof = "\n".join(f"Figure {k}. {f['caption'].split('.', 1)[-1].strip()[:50]} ........ {k + 1}"
                        for k, f in zip(numbers, plan["figures"]))
        w.text("List of figures", size=11, gap=4)
        w.text(lof, size=BODY_SIZE, gap=10)
    for k, fig in zip(numbers, plan["figures"]):
        if not plan["list_of_figures"] or k > 1:
            for _ in range(int(rng.integers(1, 4))):
                w.text(" ".join(rng.choice(SENTENCES, size=int(rng.integers(3, 7)))))
        img = fig["image"]
        h_px, w_px = img.shape[:2]
        width = float(min(w.width, rng.uniform(220, 470) * max(1.0, w_px / h_px / 1.5)))
        height = width * h_px / w_px
        cap_h = w.text_height(fig["caption"], CAPTION_SIZE, width)
        if w.page is None or w.y + height + cap_h + 12 > PAGE_H - MARGIN:
            w.new_page()
        x0 = MARGIN + (w.width - width) / 2
        above = bool(rng.random() < 0.3)
        if above:
            w.text(fig["caption"], CAPTION_SIZE, gap=float(rng.uniform(3, 8)), x0=x0, width=width)
        rect = pymupdf.Rect(x0, w.y, x0 + width, w.y + height)
        scale = float(rng.uniform(0.85, 0.95)) if version2 else 1.0
        w.page.insert_image(rect, stream=_encode(img, rng, scale))
        w.y += height + float(rng.uniform(3, 8))
        if not above:
            w.text(fig["caption"], CAPTION_SIZE, gap=24, x0=x0, width=width)
        else:
            w.y += 20
        panels = [dict(p, box=[int(round(c * scale)) for c in p["box"]]) for p in fig["panels"]]
        truth_figs.append({"page": w.page.number, "number": k, "kind": fig["kind"], "caption": fig["caption"],
                           "caption_position": "above" if above else "below", "label": fig["label"],
                           "age": fig.get("age"), "sex": fig.get("sex"), "rect": list(rect), "panels": panels,
                           "image_size": [int(round(w_px * scale)), int(round(h_px * scale))]})
        # a body sentence that starts like a caption but is not one
        w.text(f"Fig. {k}. shows that the findings were {['bilateral', 'peripheral', 'diffuse'][k % 3]} in most "
               f"patients, and Figure {k} summarises the follow-up scans of the cohort.", gap=10)
    w.text(" ".join(rng.choice(SENTENCES, size=4)))
    path = cfg.out / f"doc-{i:04d}.pdf"
    with atomic_path(path) as tmp:
        doc.save(tmp, garbage=3, deflate=True)
    return {"file": path.name, "doi": plan["doi"], "pages": doc.page_count, "version2_of": None,
            "list_of_figures": plan["list_of_figures"], "figures": truth_figs}


def write_corpus(cfg: SynthPdfConfig, progress=None) -> dict:
    """Write ``cfg.n`` PDFs and ``ground_truth.json`` into ``cfg.out``; returns the ground truth."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, 10**6])
    sources = {}
    for i in range(1, cfg.n):
        if rng.random() < cfg.duplicate_fraction:
            sources[i] = int(rng.integers(0, i))
    while any(j in sources for j in sources.values()):  # a v2 copies an original, never another v2
        sources = {i: j for i, j in sources.items() if j not in sources}

    def one(i: int) -> dict:
        src = sources.get(i)
        truth = write_document(cfg, i, plan_document(cfg, src if src is not None else i), src is not None)
        truth["version2_of"] = f"doc-{src:04d}.pdf" if src is not None else None
        if progress:
            progress(1)
        return truth

    docs = parallel_map(one, range(cfg.n), threads=cfg.threads)
    truth = {"seed": cfg.seed, "n": cfg.n, "config": cfg.model_dump(mode="json"), "documents": docs}
    with atomic_path(cfg.out / "ground_truth.json") as tmp:
        tmp.write_text(json.dumps(truth, indent=1))
    return truth
