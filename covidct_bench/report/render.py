"""Text renderings of a :class:`~covidct_bench.report.leaderboard.Leaderboard`: terminal (rich),
Markdown (the paper's table layout + the leaderboard + ablation effects) and CSV."""

from __future__ import annotations

import itertools

import pandas as pd

from covidct_bench.report import stats as S
from covidct_bench.report.leaderboard import Leaderboard

LABELS = {"accuracy": "Acc", "f1": "F1", "auc": "AUC", "sensitivity": "Sens", "specificity": "Spec"}
HEADLINE = ("accuracy", "f1", "auc")


def missing(v) -> bool:
    """None, NaN or pandas' NA (a scalar cell of a leaderboard table)."""
    return v is None or bool(pd.isna(v))


def num(v, digits: int = 3, signed: bool = False) -> str:
    if missing(v):
        return "—"
    return f"{float(v):+.{digits}f}" if signed else f"{float(v):.{digits}f}"


def ci(row: pd.Series, m: str, signed: bool = False) -> str:
    lo, hi = row.get(f"{m}_lo"), row.get(f"{m}_hi")
    if missing(lo):
        return ""
    return f"[{num(lo, signed=signed)}, {num(hi, signed=signed)}]"


def metric_cell(row: pd.Series, m: str, sep: str = " ") -> str:
    """``0.847 ± 0.012 [0.80, 0.89]`` (sd over seeds, interval from the bootstrap)."""
    v = num(row.get(m))
    sd = row.get(f"{m}_sd")
    if not missing(sd):
        v += f" ± {num(sd)}"
    interval = ci(row, m)
    return f"{v}{sep}{interval}" if interval else v


def pvalue(p) -> str:
    if missing(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def is_baseline(row: pd.Series) -> bool:
    v = row.get("is_baseline")
    return not missing(v) and bool(v)


def rank_cell(row: pd.Series) -> tuple[str, str]:
    if row.get("kind") == "reported":
        return "ref", ""
    rank = row.get("rank")
    change = row.get("rank_change")
    ch = "" if missing(change) else ("=" if change == 0 else f"{int(change):+d}")
    return ("—" if missing(rank) else str(int(rank))), ch


def shortcut_columns(sc: pd.DataFrame) -> list[str]:
    """The AUC columns of the shortcut audit (``auc[<view>]`` and ``auc[<view>][extra:<set>]``)."""
    return [c for c in sc.columns if c.startswith("auc[") and not c.endswith(("_lo", "_hi"))]


def shortcut_flag(row: pd.Series) -> str:
    flag = row.get("shortcut")
    return "—" if missing(flag) else ("yes" if flag else "no")


def extra_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("auc[extra:") and not c.endswith(("_lo", "_hi"))]


def footnotes(lb: Leaderboard) -> list[str]:
    notes = [f"Positive class: {lb.meta['positive_class']}. Split: {lb.meta['split']}. {lb.meta['method']}. "
             "± is the standard deviation over seeds."]
    notes.append(f"rank: by {lb.meta['sort']} among our rows; Δrank: places gained against the ranking on "
                 f"{lb.meta['rank_vs']} (positive = better than there).")
    if lb.meta.get("tests"):
        notes.append(f"Δ columns: {lb.meta['tests']}.")
    for r in lb.meta.get("reference", []):
        if r["status"] == "reported, not reproduced":
            notes.append(f"† {r['short']}: {r['label']}; reported, not reproduced; test set: {r['test_set']}; "
                         f"source: {r['source']}.")
    return notes


# ------------------------------------------------------------------------------------------ terminal
def _compact(row: pd.Series, m: str) -> str:
    """``0.831±0.009`` over ``[.781,.881]`` (two lines, for narrow terminals)."""
    v = num(row.get(m))
    sd = row.get(f"{m}_sd")
    if not missing(sd):
        v += f"±{num(sd)}"
    lo, hi = row.get(f"{m}_lo"), row.get(f"{m}_hi")
    return v if missing(lo) else f"{v}\n[{num(lo).removeprefix('0')},{num(hi).removeprefix('0')}]"


def terminal(lb: Leaderboard, console=None) -> None:
    """The leaderboard as rich tables; Sens / Spec / timings only where the terminal is wide enough."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = lb.table
    wide = console.width >= 150
    metrics = S.METRICS if wide else HEADLINE
    extras = extra_columns(t)
    table = Table(title=f"leaderboard: {lb.meta['split']} split, sorted by {lb.meta['sort']} "
                        f"(mean±sd over seeds, [95% CI])", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("Δ", justify="right")
    table.add_column("configuration", ratio=1, min_width=16, overflow="fold")
    table.add_column("n", justify="right")
    for m in metrics:
        table.add_column(LABELS[m], justify="right", no_wrap=True)
    for x in extras:
        table.add_column(f"AUC {x[10:-1]}", justify="right", no_wrap=True)
    if wide:
        table.add_column("train s", justify="right")
        table.add_column("img/s", justify="right")
    for _, row in t.iterrows():
        rank, change = rank_cell(row)
        reported = row.get("kind") == "reported"
        style = "italic dim" if reported else ("bold" if is_baseline(row) else None)
        name = f"{row['name']}{' †' if reported else ''}{' (baseline)' if is_baseline(row) else ''}"
        cells = [rank, change, name, "" if reported else str(int(row["n_seeds"]))]
        cells += [_compact(row, m) for m in metrics] + [_compact(row, x) for x in extras]
        if wide:
            cells += ["" if reported else num(row.get("wall_s"), 0), "" if reported else num(row.get("images_per_s"), 1)]
        table.add_row(*cells, style=style, end_section=not reported)
    console.print(table)
    if "delta_auc" in t:
        console.print(comparison_table(lb))
    if len(lb.ablation):
        console.print(ablation_table(lb))
    if len(lb.shortcut):
        console.print(shortcut_table(lb))
    if not wide:
        console.print("[dim]sensitivity, specificity and timings: a wider terminal, or --format md|csv|html[/]")
    for n in footnotes(lb):
        console.print(f"[dim]{n}[/]")


def comparison_table(lb: Leaderboard):
    from rich.table import Table

    base = [row["name"] for _, row in lb.table.iterrows() if is_baseline(row)]
    table = Table(title=f"against the baseline {base[0] if base else ''}: Δ [95% CI] (Holm-adjusted p)",
                  title_justify="left")
    table.add_column("configuration", ratio=1, overflow="fold")
    for m in HEADLINE:
        table.add_column(f"Δ{LABELS[m]}", justify="right", no_wrap=True)
    for _, row in lb.table.iterrows():
        if row.get("kind") != "ours" or is_baseline(row) or missing(row.get("delta_auc")):
            continue
        table.add_row(row["name"], *(f"{num(row[f'delta_{m}'], signed=True)} ({pvalue(row.get(f'p_{m}_holm'))})\n"
                                     f"{ci(row, f'delta_{m}', signed=True)}" for m in HEADLINE))
    return table


def ablation_table(lb: Leaderboard):
    from rich.table import Table

    table = Table(title="ablation: mean effect of each axis value (paired, over cells that differ only in that axis)")
    for col in ("grid", "change", "pairs", *(f"Δ{LABELS[m]} [95% CI]" for m in HEADLINE)):
        table.add_column(col, justify="left" if col in ("grid", "change") else "right")
    for _, r in lb.ablation.iterrows():
        table.add_row(r["grid"], f"{r['axis']}: {r['versus']} → {r['value']}", str(int(r["n_pairs"])),
                      *(f"{num(r[f'delta_{m}'], signed=True)} {ci(r, f'delta_{m}', signed=True)}" for m in HEADLINE))
    return table


def shortcut_table(lb: Leaderboard):
    from rich.table import Table

    sc = lb.shortcut
    cols = shortcut_columns(sc)
    table = Table(title="shortcut audit: AUC by view (lungs blacked out / lungs only); > 0.5 without lungs = a shortcut")
    table.add_column("configuration")
    for c in cols:
        table.add_column(c.replace("auc", "AUC "), justify="right")
    table.add_column("shortcut?", justify="center")
    for _, r in sc.iterrows():
        table.add_row(f"{r['grid']}: {r['configuration']}", *(metric_cell(r, c, "\n") for c in cols), shortcut_flag(r))
    return table


# ------------------------------------------------------------------------------------------ markdown
def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["---"] * len(header)
    return [_md_row(header), _md_row(align), *(_md_row(r) for r in rows)]


def _reported_for(lb: Leaderboard, grid_reference: str | None, axes: dict[str, str]) -> dict | None:
    for r in lb.meta.get("reference", []):
        if r["table"] == grid_reference and r["cell"] and all(axes.get(k) == str(v) for k, v in r["cell"].items()):
            return r
    return None


def paper_layout(lb: Leaderboard) -> list[str]:
    """Per grid, the paper's layout: one row per value of the first axes, a group of Acc / F1 / AUC
    columns per value of the last axis; reported numbers in parentheses, n/t where not transcribed."""
    out: list[str] = []
    ours = lb.table[lb.table["kind"] == "ours"]
    for g in lb.meta["grids"]:
        rows = ours[ours["grid"] == g["grid"]]
        entries = [lb.entries[n] for n in rows["name"]]
        levels = g["axes"]  # every axis with its values in the spec's order
        axes = list(levels)
        ref_table = g.get("reference")
        by_cell = {tuple(sorted(e.axes.items())): rows[rows["name"] == e.name].iloc[0] for e in entries}
        col_axis = axes[-1] if len(axes) >= 2 else None
        row_axes = axes[:-1] if col_axis else axes
        col_values = levels[col_axis] if col_axis else [None]
        present = {tuple(e.axes.get(a) for a in row_axes) for e in entries}
        row_values = [v for v in itertools.product(*(levels[a] for a in row_axes)) if v in present]
        header = [", ".join(row_axes) or "configuration"]
        for cv in col_values:
            header += [f"{LABELS[m]}{f' ({col_axis}={cv})' if cv is not None else ''}" for m in HEADLINE]
        transcribed = any(r["table"] == ref_table and r["status"] == "reported, not reproduced"
                          for r in lb.meta.get("reference", []))
        body = []
        for rv in row_values:
            cells = [", ".join(rv) or "default"]
            for cv in col_values:
                axes_ = dict(zip(row_axes, rv), **({col_axis: cv} if col_axis else {}))
                r = by_cell.get(tuple(sorted(axes_.items())))
                rep = _reported_for(lb, ref_table, axes_)
                for m in HEADLINE:
                    v = metric_cell(r, m) if r is not None else "not run"
                    if transcribed:
                        v += f" ({num(rep[m])})" if rep is not None and not missing(rep[m]) else " (n/t)"
                    cells.append(v)
            body.append(cells)
        out += [f"### {g['grid']}" + (f" — {g['description']}" if g.get("description") else ""), ""]
        out += _md_table(header, body, ["---"] + ["---:"] * (len(header) - 1))
        note = f"Mean ± sd over seeds [{int(S.LEVEL * 100)}% CI]"
        if transcribed:
            note += f"; in parentheses: the paper's {ref_table} (reported, not reproduced); n/t: not transcribed."
        elif ref_table:
            note += (f"; the paper's {ref_table} numbers are not transcribed in ablations/reference/paper.yaml "
                     "(fill them in to show them here).")
        out += ["", note, ""]
    return out


def markdown(lb: Leaderboard) -> str:
    t = lb.table
    lines = [f"## Leaderboard ({lb.meta['split']} split, sorted by {lb.meta['sort']})", ""]
    header = ["#", "Δrank", "configuration", "seeds", *(LABELS[m] for m in S.METRICS)]
    extras = extra_columns(t)
    header += [f"AUC {x[4:-1]}" for x in extras] + ["train s", "img/s"]
    comparing = "delta_auc" in t
    if comparing:
        header += [f"Δ{LABELS[m]} [CI] (p Holm)" for m in HEADLINE]
    body = []
    for _, row in t.iterrows():
        rank, change = rank_cell(row)
        reported = row.get("kind") == "reported"
        name = f"*{row['name']}* †" if reported else (f"**{row['name']}** (baseline)" if is_baseline(row) else row["name"])
        cells = [rank, change, name, "" if reported else str(int(row["n_seeds"]))]
        cells += [metric_cell(row, m) for m in S.METRICS] + [metric_cell(row, x) for x in extras]
        cells += ["" if reported else num(row.get("wall_s"), 0), "" if reported else num(row.get("images_per_s"), 1)]
        if comparing:
            for m in HEADLINE:
                d = row.get(f"delta_{m}")
                cells.append("" if missing(d) else
                             f"{num(d, signed=True)} {ci(row, f'delta_{m}', signed=True)} ({pvalue(row.get(f'p_{m}_holm'))})")
        body.append(cells)
    lines += _md_table(header, body, ["---:", "---:", "---", "---:"] + ["---:"] * (len(header) - 4))
    lines += [""] + [f"- {n}" for n in footnotes(lb)] + [""]
    if any(g.get("reference") or len(lb.entries) for g in lb.meta["grids"]):
        lines += ["## In the paper's layout", ""] + paper_layout(lb)
    if len(lb.ablation):
        lines += ["## Ablation effects", "", "Mean change against the axis's first value over the pairs of cells "
                  "that differ only in that axis (paired bootstrap interval):", ""]
        for _, r in lb.ablation.iterrows():
            parts = ", ".join(f"{LABELS[m]} {num(r[f'delta_{m}'], signed=True)} {ci(r, f'delta_{m}', signed=True)}" for m in HEADLINE)
            lines.append(f"- **{r['axis']}: {r['versus']} → {r['value']}** ({r['grid']}, {int(r['n_pairs'])} pair(s)): {parts}")
        lines.append("")
    if len(lb.shortcut):
        sc = lb.shortcut
        cols = shortcut_columns(sc)
        lines += ["## Shortcut audit", "", "AUC by view: an interval above 0.5 with the lungs blacked out means the "
                  "classifier uses cues outside the lungs.", ""]
        rows = [[f"{r['grid']}: {r['configuration']}", *(metric_cell(r, c) for c in cols), shortcut_flag(r)]
                for _, r in sc.iterrows()]
        lines += _md_table(["configuration", *(c.replace("auc", "AUC ") for c in cols), "shortcut?"], rows) + [""]
    lines += ["## Runs", ""]
    lines += _md_table(["grid", "trials", "hardware", "torch", "ray", "git", "train hours", "finished"],
                       [[g["grid"], str(g["trials"]), g["hardware"], g["torch"], g["ray"], g["git_sha"],
                         num(g["train_hours"], 2), g["finished"]] for g in lb.meta["grids"]])
    return "\n".join(lines) + "\n"


def csv(lb: Leaderboard) -> str:
    return lb.table.to_csv(index=False, float_format="%.6g")
