"""The report's figures as inline SVG (matplotlib, Agg): no file and no network needed to show them."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from covidct_bench.report import stats as S
from covidct_bench.report.leaderboard import Leaderboard

OURS, REPORTED = "#1f77b4", "#999999"


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG is inlined in HTML


def _figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    return plt.subplots(figsize=(w, h))


def top(lb: Leaderboard, k: int) -> list[str]:
    ours = lb.table[lb.table["kind"] == "ours"]
    return list(ours["name"].head(k))


def pooled(lb: Leaderboard, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of every seed of a configuration, concatenated."""
    sc = lb.entries[name].scored[lb.meta["split"]]
    return np.tile(sc.y, len(sc.score)), sc.score.reshape(-1)


def bars(lb: Leaderboard, metric: str = "auc") -> str:
    """Each row's metric with its interval; reported rows in grey without one."""
    t = lb.table[lb.table[metric].notna()]
    fig, ax = _figure(6.5, 0.32 * len(t) + 0.9)
    y = np.arange(len(t))[::-1]
    ours = (t["kind"] == "ours").to_numpy()
    vals = t[metric].to_numpy(float)
    lo = t.get(f"{metric}_lo", pd.Series(np.nan, index=t.index)).to_numpy(float)
    hi = t.get(f"{metric}_hi", pd.Series(np.nan, index=t.index)).to_numpy(float)
    err = np.vstack([np.where(np.isnan(lo), 0, vals - lo), np.where(np.isnan(hi), 0, hi - vals)])
    ax.barh(y, vals, color=np.where(ours, OURS, REPORTED), hatch=None, height=0.6)
    ax.errorbar(vals[ours], y[ours], xerr=err[:, ours], fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_yticks(y, [f"{n} †" if not o else n for n, o in zip(t["name"], ours)])
    lower = np.nanmin(np.r_[lo[ours], vals]) if len(vals) else 0
    ax.set_xlim(max(0.0, min(0.5, lower - 0.05)), 1.0)
    ax.set_xlabel(f"{metric} ({lb.meta['split']}; bars: 95% CI; † reported, not reproduced)")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def roc(lb: Leaderboard, k: int = 5) -> str:
    """ROC curves of the top ``k`` configurations (predictions of all seeds pooled)."""
    from sklearn.metrics import roc_curve

    fig, ax = _figure(4.8, 4.4)
    for name in top(lb, k):
        y, s = pooled(lb, name)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        row = lb.table[lb.table["name"] == name].iloc[0]
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {row['auc']:.3f} [{row['auc_lo']:.3f}, {row['auc_hi']:.3f}])")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity (COVID = positive)")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=7)
    return _svg(fig)


def calibration(lb: Leaderboard, k: int = 5, bins: int = 10) -> str:
    """Reliability diagram of the top ``k`` configurations (quantile bins, seeds pooled)."""
    from sklearn.calibration import calibration_curve

    fig, ax = _figure(4.8, 4.4)
    for name in top(lb, k):
        y, s = pooled(lb, name)
        if len(np.unique(y)) < 2:
            continue
        frac, mean = calibration_curve(y, np.clip(s, 0, 1), n_bins=min(bins, max(2, len(y) // 10)), strategy="quantile")
        brier = float(np.mean((np.clip(s, 0, 1) - y) ** 2))
        ax.plot(mean, frac, marker="o", ms=3, lw=1.2, label=f"{name} (Brier {brier:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("predicted P(COVID)")
    ax.set_ylabel("observed fraction COVID")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=7)
    return _svg(fig)


def ablation(lb: Leaderboard, metric: str = "auc") -> str:
    """Forest plot: each axis value's mean effect against the axis's first value, with its interval."""
    a = lb.ablation
    fig, ax = _figure(6.5, 0.4 * len(a) + 0.9)
    y = np.arange(len(a))[::-1]
    d = a[f"delta_{metric}"].to_numpy(float)
    err = np.vstack([d - a[f"delta_{metric}_lo"].to_numpy(float), a[f"delta_{metric}_hi"].to_numpy(float) - d])
    excludes_zero = (a[f"delta_{metric}_lo"] > 0) | (a[f"delta_{metric}_hi"] < 0)
    ax.errorbar(d, y, xerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    ax.scatter(d, y, color=np.where(excludes_zero, OURS, "white"), edgecolor=OURS, zorder=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(y, [f"{r['axis']}: {r['versus']} → {r['value']} ({r['grid']}, {int(r['n_pairs'])} pairs)"
                      for _, r in a.iterrows()])
    ax.set_xlabel(f"Δ {metric} (95% CI; filled: interval excludes 0)")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def figures(lb: Leaderboard, k: int = 5) -> dict[str, str]:
    out = {"bars": bars(lb, lb.meta["sort"] if lb.meta["sort"] in S.METRICS else "auc"), "roc": roc(lb, k),
           "calibration": calibration(lb, k)}
    if len(lb.ablation):
        out["ablation"] = ablation(lb)
    return out
