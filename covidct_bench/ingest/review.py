"""Human review of an ingest: a static HTML gallery plus a CSV to edit, and applying that CSV.

``write_review(dir)`` writes ``review.html`` (thumbnail, caption, predicted label, CT score per
panel) and ``review.csv`` with the editable columns ``is_ct`` and ``label`` (covid / non_covid /
unknown). ``apply_review(dir, csv)`` validates every row (one-line error naming the row), applies
the changes (``label_source = review``) and rewrites ``figures.parquet`` and ``manifest.parquet``
atomically.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pandas as pd

from covidct_bench.errors import BenchError
from covidct_bench.io import atomic_path

REVIEW_COLUMNS = ("panel_id", "image_path", "doc", "page", "figure_number", "panel_letter", "ct_score", "is_ct",
                  "label", "label_source", "duplicate_of", "caption")
_LABEL_IN = {"covid": 1, "1": 1, "positive": 1, "non_covid": 0, "non-covid": 0, "noncovid": 0, "0": 0,
             "negative": 0, "unknown": None, "": None, "none": None}
_BOOL_IN = {"true": True, "1": True, "yes": True, "y": True, "false": False, "0": False, "no": False, "n": False}


def _figures(out: Path) -> pd.DataFrame:
    path = out / "figures.parquet"
    if not path.is_file():
        raise BenchError(f"{path}: not found (run `covidct-bench ingest run` first)")
    return pd.read_parquet(path)


def _label_name(v) -> str:
    return "unknown" if pd.isna(v) else ("covid" if int(v) == 1 else "non_covid")


def write_review(out: str | os.PathLike) -> tuple[Path, Path]:
    out = Path(out)
    df = _figures(out).sort_values(["doc", "figure_index", "panel_index"])
    csv = df[list(REVIEW_COLUMNS)].copy()
    csv["label"] = csv["label"].map(_label_name)
    with atomic_path(out / "review.csv") as tmp:
        csv.to_csv(tmp, index=False)
    cards = []
    for r in df.itertuples():
        cls = "ct" if r.is_ct else "other"
        cards.append(
            f'<figure class="{cls}"><a href="{html.escape(r.image_path)}"><img loading="lazy" '
            f'src="{html.escape(r.image_path)}" alt="{html.escape(r.panel_id)}"></a><figcaption>'
            f"<b>{html.escape(_label_name(r.label))}</b> · CT {r.ct_score:.2f}"
            f"{' · duplicate' if isinstance(r.duplicate_of, str) else ''}<br><code>{html.escape(r.panel_id)}</code>"
            f"<br>{html.escape(r.doc)} p{r.page + 1} fig {html.escape(str(r.figure_number or '?'))}"
            f"{' (' + html.escape(r.panel_letter) + ')' if isinstance(r.panel_letter, str) else ''}"
            f"<details><summary>caption</summary>{html.escape(r.caption or '(none)')}</details></figcaption></figure>")
    summary = json.loads((out / "ingest.json").read_text()) if (out / "ingest.json").is_file() else {}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>covidct-bench ingest review</title>
<style>body{{font-family:sans-serif;margin:1em}} .grid{{display:flex;flex-wrap:wrap;gap:10px}}
figure{{width:220px;margin:0;padding:6px;border:3px solid #bbb;border-radius:6px;font-size:12px}}
figure.ct{{border-color:#2a7}} img{{width:100%;height:160px;object-fit:contain;background:#000}}</style></head>
<body><h1>Ingest review</h1><p>{len(df)} panels, {int(df['is_ct'].sum())} predicted CT (green border).
Edit <code>review.csv</code> (columns <code>is_ct</code>: true/false, <code>label</code>: covid / non_covid / unknown),
then run <code>covidct-bench ingest apply-review {html.escape(str(out))} review.csv</code>.</p>
<p><small>{html.escape(json.dumps({k: summary.get(k) for k in ('documents', 'panels', 'ct_panels', 'errors')}))}</small></p>
<div class="grid">{''.join(cards)}</div></body></html>"""
    with atomic_path(out / "review.html") as tmp:
        tmp.write_text(page)
    return out / "review.html", out / "review.csv"


def apply_review(out: str | os.PathLike, csv_path: str | os.PathLike) -> dict:
    """Apply a reviewed CSV; returns counts of changed labels and CT flags."""
    from covidct_bench.data.manifest import MANIFEST_FILE, validate_manifest, write_manifest
    from covidct_bench.ingest.pipeline import IngestConfig, to_manifest

    out, csv_path = Path(out), Path(csv_path)
    if not csv_path.is_file():
        raise BenchError(f"{csv_path}: not found")
    df = _figures(out)
    try:
        edits = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise BenchError(f"{csv_path}: not a readable CSV ({e})") from None
    missing = {"panel_id", "is_ct", "label"} - set(edits.columns)
    if missing:
        raise BenchError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
    index = {pid: i for i, pid in zip(df.index, df["panel_id"])}
    changed = {"label": 0, "is_ct": 0}
    updates = []
    for n, row in enumerate(edits.itertuples(index=False), start=2):  # row 1 is the header
        pid = row.panel_id.strip()
        if pid not in index:
            raise BenchError(f"{csv_path} row {n}: unknown panel_id {pid!r}")
        label_key, ct_key = row.label.strip().lower(), row.is_ct.strip().lower()
        if label_key not in _LABEL_IN:
            raise BenchError(f"{csv_path} row {n}: label {row.label!r} is not covid, non_covid or unknown")
        if ct_key not in _BOOL_IN:
            raise BenchError(f"{csv_path} row {n}: is_ct {row.is_ct!r} is not true or false")
        updates.append((index[pid], _LABEL_IN[label_key], _BOOL_IN[ct_key]))
    for i, label, is_ct in updates:  # validated everything first: a bad row changes nothing
        old = df.at[i, "label"]
        if (pd.isna(old) and label is not None) or (not pd.isna(old) and (label is None or int(old) != label)):
            df.at[i, "label"] = label if label is not None else pd.NA
            df.at[i, "label_text"] = _label_name(label if label is not None else float("nan"))
            df.at[i, "label_source"] = "review"
            changed["label"] += 1
        if bool(df.at[i, "is_ct"]) != is_ct:
            df.at[i, "is_ct"] = is_ct
            changed["is_ct"] += 1
    summary = json.loads((out / "ingest.json").read_text()) if (out / "ingest.json").is_file() else {}
    cfg = IngestConfig(**summary.get("config", {}))
    manifest = to_manifest(df, cfg)
    validate_manifest(manifest, where=str(out / MANIFEST_FILE))  # before writing anything
    with atomic_path(out / "figures.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    write_manifest(manifest, out / MANIFEST_FILE)
    return {**changed, "manifest_rows": len(manifest)}
