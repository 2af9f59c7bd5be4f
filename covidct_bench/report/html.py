"""The HTML report: one self-contained file (inline CSS, JavaScript and SVG figures; nothing fetched),
with a sortable leaderboard, figures, ablation effects, the shortcut audit and run metadata."""

from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from covidct_bench.report import plots
from covidct_bench.report import stats as S
from covidct_bench.report.leaderboard import Leaderboard
from covidct_bench.report.render import (HEADLINE, LABELS, ci, extra_columns, footnotes, is_baseline, missing, num, pvalue,
                                         rank_cell, shortcut_columns, shortcut_flag)

TEMPLATE = "report.html.j2"


@dataclass
class Column:
    label: str
    sortable: bool = True
    name: bool = False
    title: str = ""


def _v(x) -> str:
    """A cell's sort key (``data-v``); empty for a missing value."""
    if missing(x):
        return ""
    return repr(float(x))


def _metric(row: pd.Series, m: str) -> dict:
    sd = row.get(f"{m}_sd")
    text = num(row.get(m)) + ("" if missing(sd) else f" ± {num(sd)}")
    return {"text": text, "ci": ci(row, m), "v": _v(row.get(m))}


def _leaderboard(lb: Leaderboard) -> tuple[list[Column], list[dict]]:
    t = lb.table
    extras = extra_columns(t)
    comparing = "delta_auc" in t
    cols = [Column("#", title="rank among our rows"), Column("Δrank", title=f"places gained against the rank on {lb.meta['rank_vs']}"),
            Column("configuration", sortable=False, name=True), Column("seeds")]
    cols += [Column(LABELS[m]) for m in S.METRICS] + [Column(f"AUC {x[10:-1]}", title=x) for x in extras]
    cols += [Column("train s"), Column("img/s")]
    if comparing:
        cols += [Column(f"Δ{LABELS[m]}", title="against the baseline; Holm-adjusted p") for m in HEADLINE]
    rows = []
    for _, r in t.iterrows():
        reported = r.get("kind") == "reported"
        rank, change = rank_cell(r)
        cells = [{"text": rank, "v": _v(r.get("rank")) if not reported else ""},
                 {"text": change, "v": _v(r.get("rank_change")) if not reported else ""},
                 {"text": r["name"], "name": True, "v": "", "tag": "reported" if reported else ("baseline" if is_baseline(r) else ""),
                  "ci": r.get("test_set") or ""},
                 {"text": "" if reported else str(int(r["n_seeds"])), "v": "" if reported else _v(r["n_seeds"])}]
        cells += [_metric(r, m) for m in S.METRICS] + [_metric(r, x) for x in extras]
        cells += [{"text": "" if reported else num(r.get("wall_s"), 0), "v": "" if reported else _v(r.get("wall_s"))},
                  {"text": "" if reported else num(r.get("images_per_s"), 1), "v": "" if reported else _v(r.get("images_per_s"))}]
        if comparing:
            for m in HEADLINE:
                d = r.get(f"delta_{m}")
                has = not missing(d)
                cells.append({"text": f"{num(d, signed=True)} (p {pvalue(r.get(f'p_{m}_holm'))})" if has else "",
                              "ci": ci(r, f"delta_{m}", signed=True) if has else "", "v": _v(d) if has else ""})
        rows.append({"cls": "reported" if reported else ("baseline" if is_baseline(r) else "ours"), "cells": cells})
    return cols, rows


def _ablation(lb: Leaderboard) -> list[dict]:
    out = []
    for _, r in lb.ablation.iterrows():
        row = {"grid": r["grid"], "axis": r["axis"], "versus": r["versus"], "value": r["value"], "n_pairs": int(r["n_pairs"])}
        for m in HEADLINE:
            lo, hi = r[f"delta_{m}_lo"], r[f"delta_{m}_hi"]
            row.update({f"d_{m}": num(r[f"delta_{m}"], signed=True), f"ci_{m}": ci(r, f"delta_{m}", signed=True),
                        f"cls_{m}": "good" if lo > 0 else ("bad" if hi < 0 else "")})
        out.append(row)
    return out


def _shortcut(lb: Leaderboard) -> tuple[list[str], list[dict]]:
    sc = lb.shortcut
    if not len(sc):
        return [], []
    cols = shortcut_columns(sc)
    rows = [{"name": f"{r['grid']}: {r['configuration']}", "cells": [{"text": num(r.get(c)), "ci": ci(r, c)} for c in cols],
             "flag": shortcut_flag(r)} for _, r in sc.iterrows()]
    return [c.replace("auc", "AUC ") for c in cols], rows


def render(lb: Leaderboard, top_k: int = 5, command: str | None = None) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    from covidct_bench import __version__

    env = Environment(loader=PackageLoader("covidct_bench.report", "templates"), autoescape=select_autoescape(["html", "j2"]))
    columns, rows = _leaderboard(lb)
    shortcut_columns, shortcut = _shortcut(lb)
    grids = lb.meta["grids"]
    run_header = ["grid", "trials", "failed attempts", "seeds", "hardware", "nodes", "torch", "ray", "covidct-bench",
                  "git sha", "train hours", "GPU hours", "finished"]
    runs = [[g["grid"], g["trials"], g["failed_attempts"], g["seeds"], g["hardware"], g["nodes"], g["torch"], g["ray"],
             g["covidct_bench"], g["git_sha"], num(g["train_hours"], 2), num(g["gpu_hours"], 2), g["finished"]] for g in grids]
    return env.get_template(TEMPLATE).render(
        title=f"covidct-bench: {', '.join(g['grid'] for g in grids)}",
        subtitle=f"{lb.meta['split']} split, sorted by {lb.meta['sort']}; positive class {lb.meta['positive_class']}; "
                 + "; ".join(f"{g['grid']}: {g['description']}" for g in grids if g.get("description")),
        columns=columns, rows=rows, notes=footnotes(lb), figures=plots.figures(lb, top_k), k=top_k, meta=lb.meta,
        ablation=_ablation(lb), headline=HEADLINE, labels=LABELS, shortcut=shortcut, shortcut_columns=shortcut_columns,
        run_header=run_header, runs=runs, version=__version__,
        generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        command=command or " ".join(["covidct-bench", *sys.argv[1:]]))


def write(lb: Leaderboard, out, top_k: int = 5, command: str | None = None):
    """Render to ``out`` (a local path or a storage URI), whole or not at all; returns its Location."""
    from covidct_bench.storage import Location

    out = Location.of(out)
    out.write_text(render(lb, top_k, command))
    return out
