"""Score an ingest output against a synthetic corpus' ``ground_truth.json``.

Figures are matched by document and order (the order of figures on the pages), panels by the
centre of a detected panel falling inside a true panel box. Reported: figure and caption recall,
exact panel-count rate, CT-detection precision / recall, label accuracy and coverage on true CT
panels with a known label, age / sex accuracy, and the share of "version 2" CT panels that
dedup marked as duplicates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


def _norm(text) -> str:
    return " ".join(str(text or "").split())


def score_ingest(out: str | os.PathLike, truth_path: str | os.PathLike) -> dict:
    out = Path(out)
    truth = json.loads(Path(truth_path).read_text())
    df = pd.read_parquet(out / "figures.parquet")
    figs_true = figs_found = captions_ok = counts_ok = 0
    tp = fp = fn = tn = 0
    lab_n = lab_ok = lab_answered = 0
    age_n = age_ok = 0
    dup_n = dup_ok = 0
    for d in truth["documents"]:
        mine = df[df["doc"] == d["file"]]
        for k, f in enumerate(d["figures"]):
            figs_true += 1
            fig = mine[mine["figure_index"] == k]
            if fig.empty or int(fig["page"].iloc[0]) != f["page"]:
                fn += sum(p["is_ct"] for p in f["panels"])
                continue
            figs_found += 1
            captions_ok += _norm(fig["caption"].iloc[0]) == _norm(f["caption"])
            counts_ok += len(fig) == len(f["panels"])
            if f.get("age") is not None and fig["age"].notna().any():
                age_n += 1
                age_ok += float(fig["age"].dropna().iloc[0]) == float(f["age"])
            for p in f["panels"]:
                x0, y0, x1, y1 = p["box"]
                cx = (fig["bbox"].map(lambda b: (b[0] + b[2]) / 2)).to_numpy()
                cy = (fig["bbox"].map(lambda b: (b[1] + b[3]) / 2)).to_numpy()
                hit = fig[(cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)]
                pred_ct = bool(hit["is_ct"].any()) if len(hit) else False
                if p["is_ct"]:
                    tp += pred_ct
                    fn += not pred_ct
                else:
                    fp += pred_ct
                    tn += not pred_ct
                if p["is_ct"] and p["label"] is not None and len(hit):
                    lab_n += 1
                    got = hit["label"].iloc[0]
                    lab_answered += not pd.isna(got)
                    lab_ok += (not pd.isna(got)) and int(got) == p["label"]
                if d.get("version2_of") and p["is_ct"] and pred_ct:
                    dup_n += 1
                    dup_ok += bool(hit["duplicate_of"].notna().any())
    ratio = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    return {"figures": figs_true, "figure_recall": ratio(figs_found, figs_true),
            "caption_recall": ratio(captions_ok, figs_true), "panel_count_exact": ratio(counts_ok, figs_found),
            "ct_precision": ratio(tp, tp + fp), "ct_recall": ratio(tp, tp + fn), "ct_panels": tp + fn,
            "label_accuracy": ratio(lab_ok, lab_answered), "label_coverage": ratio(lab_answered, lab_n),
            "label_accuracy_all": ratio(lab_ok, lab_n), "age_accuracy": ratio(age_ok, age_n),
            "duplicate_recall": ratio(dup_ok, dup_n), "version2_ct_panels": dup_n}
