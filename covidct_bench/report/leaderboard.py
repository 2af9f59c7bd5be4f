"""Leaderboards from grid results: one row per configuration, with patient-level bootstrap intervals.

A *configuration* is a grid cell (its axis values and the parameters its search chose); its seeds
are the grid's final trials. Everything comes from the results a grid writes (``tune/results.py``):
the rows give seeds, timings and validation scores; the per-image predictions give the metrics and
their intervals (``report/stats.py``). Reference rows are the published numbers of
``ablations/reference/paper.yaml``: *reported, not reproduced*, each with the test set it used.

``build(...)`` returns a :class:`Leaderboard`: ``table`` (tidy, one row per configuration or
reference row: what csv/json export), ``ablation`` (mean effect of each axis value against the
axis's first value, over the pairs of cells that differ only in that axis), ``shortcut`` (the
shortcut audit's ``view`` cells side by side), ``entries`` (aligned predictions, for plots) and
``meta`` (method, settings, per-grid run metadata). The renderers in ``report/render.py`` and
``report/html.py`` only format it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from covidct_bench.errors import BenchError
from covidct_bench.storage import Location
from covidct_bench.report import stats as S
from covidct_bench.tune import results as R
from covidct_bench.tune.reference import reference_table

SORTABLE = (*S.METRICS, "wall_s", "images_per_s")
LOWER_IS_BETTER = {"wall_s"}
ROW_COLUMNS = ("grid", "phase", "cell", "config_hash", "seed", "split", "status", "accuracy", "f1", "auc",
               "sensitivity", "specificity", "wall_s", "images_per_s")
REFERENCE_LEVELS = ("none", "random", "full", "covid-ct", "imagenet")  # an axis's baseline when no spec is kept


# --------------------------------------------------------------------------------------- loading
@dataclass
class Scored:
    """One configuration's predictions on one split, aligned across seeds: [S, N] scores."""

    image_id: np.ndarray
    patient_id: np.ndarray
    y: np.ndarray
    score: np.ndarray
    pred: np.ndarray

    def subset(self, image_ids: np.ndarray) -> "Scored":
        pos = pd.Index(self.image_id).get_indexer(image_ids)
        return Scored(self.image_id[pos], self.patient_id[pos], self.y[pos], self.score[:, pos], self.pred[:, pos])

    def _by_seed(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric per seed and per row of weights ``w``: [S, B]."""
        per = [S.weighted_metrics(w, self.y, score, pred) for score, pred in zip(self.score, self.pred)]
        return {m: np.stack([p[m] for p in per]) for m in S.METRICS}

    def per_seed(self) -> dict[str, np.ndarray]:
        """Each metric per seed (no resampling)."""
        return {m: v[:, 0] for m, v in self._by_seed(np.ones((1, len(self.y)))).items()}

    def resampled(self, resampler: S.Resampler) -> dict[str, np.ndarray]:
        """Each metric's bootstrap distribution [B]: per resample, the mean over seeds."""
        return {m: v.mean(0) for m, v in self._by_seed(resampler.weights(self.patient_id)).items()}


@dataclass
class Entry:
    """One configuration of ours."""

    name: str
    grid: str
    cell: str
    axes: dict[str, str]
    params: str
    seeds: list[int]
    rows: pd.DataFrame  # finished final rows, every split
    scored: dict[str, Scored] = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # the first seed's resolved TrainConfig


@dataclass
class GridResults:
    name: str
    path: Location
    rows: pd.DataFrame
    spec: dict


def grid_dirs(paths: list[str | Path], grid: str | None = None) -> list[Location]:
    """Grid result folders under each path (a grid folder itself, or a folder of grids), each a local
    folder or a storage URI (``s3://bucket/results``)."""
    found: list[Location] = []
    for p in map(Location.of, paths or ["results"]):
        if not p.is_dir():
            raise BenchError(f"{p}: no such results directory")
        if (p / R.ROWS).is_dir():
            found.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / R.ROWS).is_dir() and not d.name.startswith("_"))
        if not subs:
            raise BenchError(f"{p}: no grid results here (expected {p}/<grid>/rows/*.parquet or {p}/rows/*.parquet)")
        found += subs
    if grid is not None:
        keep = [d for d in found if d.name == grid]
        if not keep:
            raise BenchError(f"--grid {grid}: not among the grids found ({', '.join(d.name for d in found)})")
        found = keep
    return found


def load_grids(paths: list[str | Path], grid: str | None = None) -> list[GridResults]:
    """The grids under ``paths`` that have finished final trials (a grid still searching is left out
    when it was found in a folder of grids; named on its own, it is an error)."""
    out: dict[str, GridResults] = {}
    named = {Location.of(p) for p in paths if (Location.of(p) / R.ROWS).is_dir()}
    empty = []
    for d in grid_dirs(paths, grid):
        rows, spec = R.read_results(d, required=ROW_COLUMNS), R.read_spec(d)
        if len(rows) and spec.get("final_trials") is not None:  # the trials of the spec it last ran, not an earlier preset's
            rows = rows[(rows["phase"] != "final") | rows["config_hash"].isin(spec["final_trials"])]
        final = R.finished(rows, "final") if len(rows) else rows
        if not len(final):
            if d in named:
                raise BenchError(f"{d}: no finished final trial yet (grid status shows what is missing)")
            empty.append(d)
            continue
        name = str(final["grid"].iloc[0])
        if name in out:
            raise BenchError(f"grid {name!r} found twice ({out[name].path} and {d}): pass one of them")
        out[name] = GridResults(name, d, rows, spec)
    if not out:
        raise BenchError(f"{', '.join(map(str, empty))}: no finished final trial yet (grid status shows what is missing)")
    return list(out.values())


def _axes_of(g: GridResults) -> list[str]:
    if g.spec.get("axes"):
        return list(g.spec["axes"])
    cells = R.finished(g.rows, "final")["cell"].unique()
    names: list[str] = []
    for c in cells:
        for part in str(c).split(","):
            if "=" in part and (k := part.split("=", 1)[0]) not in names:
                names.append(k)
    return names


def _align(frames: list[pd.DataFrame], split: str, where: str) -> Scored | None:
    per = [f[f["split"] == split].drop_duplicates("image_id").set_index("image_id") for f in frames]
    if not len(per[0]):
        return None
    ids = per[0].index.sort_values()
    for i, f in enumerate(per[1:], 1):
        if len(f) != len(ids) or not f.index.isin(ids).all():
            raise BenchError(f"{where}: seed #{i + 1} has other {split} images than seed #1 ({len(f)} vs {len(ids)})")
    first = per[0].loc[ids]
    pid = first["patient_id"].astype(str).to_numpy()
    pid = np.where(pd.isna(first["patient_id"]).to_numpy() | (pid == ""), ids.to_numpy().astype(str), pid)
    return Scored(ids.to_numpy().astype(str), pid, first["y_true"].to_numpy().astype(int),
                  np.stack([f.loc[ids, "score"].to_numpy(np.float64) for f in per]),
                  np.stack([f.loc[ids, "y_pred"].to_numpy().astype(int) for f in per]))


def _run_config(g: GridResults, row: pd.Series) -> dict:
    import yaml

    path = g.path / str(row.get("run_dir") or "") / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def entries(grids: list[GridResults]) -> list[Entry]:
    """Every configuration (grid cell) with finished final trials and its aligned predictions."""
    many = len(grids) > 1
    out = []
    for g in grids:
        final = R.finished(g.rows, "final")
        axes = _axes_of(g)
        for cell, rows in final.groupby("cell", sort=False):
            trials = rows.drop_duplicates("config_hash").sort_values("seed")
            first = trials.iloc[0]
            frames = [R.read_predictions(g.path, h) for h in trials["config_hash"]]
            e = Entry(name=f"{g.name}/{cell}" if many else str(cell), grid=g.name, cell=str(cell),
                      axes={a: str(first[a]) for a in axes if a in rows}, params=str(first.get("params", "{}")),
                      seeds=[int(s) for s in trials["seed"]], rows=rows, config=_run_config(g, first))
            for split in rows["split"].dropna().unique():
                if split == "val":
                    continue
                got = _align(frames, split, f"{g.path}/{R.PREDICTIONS} ({cell})")
                if got is not None:
                    e.scored[str(split)] = got
            out.append(e)
    return out


# ------------------------------------------------------------------------------------- leaderboard
@dataclass
class Leaderboard:
    table: pd.DataFrame
    ablation: pd.DataFrame
    shortcut: pd.DataFrame
    entries: dict[str, Entry]
    meta: dict


def _resampler(es: list[Entry], split: str, n_boot: int, seed: int) -> S.Resampler | None:
    scored = [e.scored[split] for e in es if split in e.scored]
    if not scored:
        return None
    return S.Resampler.build(np.concatenate([s.patient_id for s in scored]), np.concatenate([s.y for s in scored]),
                             n_boot=n_boot, seed=seed)


def _summaries(es: list[Entry], split: str, resampler: S.Resampler) -> dict[str, dict]:
    """Per entry: per-seed metrics and bootstrap distributions on ``split``."""
    out = {}
    for e in es:
        if split in e.scored:
            sc = e.scored[split]
            out[e.name] = {"per_seed": sc.per_seed(), "dist": sc.resampled(resampler), "scored": sc}
    return out


def _estimate(summary: dict, metric: str, column: str) -> dict[str, float]:
    """``column``: the mean over seeds; ``column_lo`` / ``column_hi``: its bootstrap interval."""
    lo, hi = S.interval(summary["dist"][metric])
    return {column: float(np.nanmean(summary["per_seed"][metric])), f"{column}_lo": lo, f"{column}_hi": hi}


def _rank(values: pd.Series, metric: str) -> pd.Series:
    return values.rank(ascending=metric in LOWER_IS_BETTER, method="min", na_option="keep")


def _comparison(sums: dict[str, dict], baseline: str, resampler: S.Resampler) -> pd.DataFrame:
    """Each configuration minus the baseline: delta, its interval and paired p-value (DeLong for AUC,
    paired bootstrap otherwise), Holm-adjusted across the table per metric."""
    base = sums[baseline]
    rows = []
    for name, s in sums.items():
        if name == baseline:
            continue
        a, b = s["scored"], base["scored"]
        common = np.intersect1d(a.image_id, b.image_id)
        row = {"name": name, "paired_images": len(common)}
        if len(common) < 4:
            rows.append(row)
            continue
        if len(common) == len(a.image_id) == len(b.image_id):
            da, db, pa, pb = s["dist"], base["dist"], s["per_seed"], base["per_seed"]
        else:
            a, b = a.subset(common), b.subset(common)
            da, db, pa, pb = a.resampled(resampler), b.resampled(resampler), a.per_seed(), b.per_seed()
        for m in S.METRICS:
            d = da[m] - db[m]
            lo, hi = S.interval(d)
            row.update({f"delta_{m}": float(np.nanmean(pa[m]) - np.nanmean(pb[m])), f"delta_{m}_lo": lo,
                        f"delta_{m}_hi": hi, f"p_{m}": S.bootstrap_p(d)})
        try:
            clustered = len(np.unique(a.patient_id)) < len(a.patient_id)
            row["p_auc"] = S.delong_contrast(a.y, a.score, b.score, a.patient_id if clustered else None)[2]
        except ValueError:
            row["p_auc"] = float("nan")
        rows.append(row)
    df = pd.DataFrame(rows)
    for m in S.METRICS:
        if f"p_{m}" in df:
            df[f"p_{m}_holm"] = S.holm(df[f"p_{m}"].to_numpy())
    return df


def _resolve_baseline(baseline: str, names: list[str], entries_: dict[str, Entry], reported: list[str]) -> str:
    if baseline in names:
        return baseline
    by_cell = [n for n in names if entries_[n].cell == baseline]
    if len(by_cell) == 1:
        return by_cell[0]
    if baseline in reported:
        raise BenchError(f"--baseline {baseline}: a reported row has no predictions to test against; pick one of ours")
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise BenchError(f"--baseline {baseline}: no such row (rows: {shown})")


def _reference_rows(grids: list[GridResults], reference: str | Path | None) -> pd.DataFrame:
    tables = sorted({g.spec.get("reference") for g in grids if g.spec.get("reference")})
    frames = [reference_table(t, reference) for t in tables] or [reference_table("baselines", reference)]
    ref = pd.concat(frames, ignore_index=True).drop_duplicates(["table", "label"])
    return ref


def _test_set(e: Entry, split: str) -> str:
    sc = e.scored.get(split)
    dataset = e.config.get("dataset", "?")
    name = split.split(":", 1)[1] if split.startswith("extra:") else f"{dataset} {split}"
    if sc is None:
        return name
    return f"{name} ({int(sc.y.sum())} COVID / {int((sc.y == 0).sum())} non-COVID, {len(np.unique(sc.patient_id))} patients)"


def build(paths: list[str | Path] | None = None, *, grid: str | None = None, split: str = "test", sort: str = "auc",
          baseline: str | None = None, n_boot: int = 2000, seed: int = 0, reference: str | Path | None = None) -> Leaderboard:
    """The leaderboard of the grids under ``paths``; see the module docstring."""
    if sort not in SORTABLE:
        raise BenchError(f"--sort {sort}: not a leaderboard column (choose from {', '.join(SORTABLE)})")
    if n_boot < 100:
        raise BenchError(f"--boot {n_boot}: use at least 100 resamples (2000 is the default)")
    grids = load_grids(paths or ["results"], grid)
    es = entries(grids)
    scored = [e for e in es if split in e.scored]
    if not scored:
        have = sorted({s for e in es for s in e.scored})
        raise BenchError(f"--split {split}: no predictions on that split (have: {', '.join(have) or 'none'})")
    resampler = _resampler(scored, split, n_boot, seed)
    sums = _summaries(scored, split, resampler)
    clustered = any(len(np.unique(e.scored[split].patient_id)) < len(e.scored[split].y) for e in scored)

    extras = sorted({s for e in es for s in e.scored if s.startswith("extra:") and s != split})
    extra_sums = {}
    for x in extras:
        rs = _resampler(es, x, n_boot, seed)
        extra_sums[x] = _summaries([e for e in es if x in e.scored], x, rs)

    rank_vs = "val" if split == "test" else "test"
    records = []
    for e in scored:
        s = sums[e.name]
        rec = {"name": e.name, "kind": "ours", "grid": e.grid, "cell": e.cell, **e.axes, "params": e.params,
               "n_seeds": len(e.seeds), "seeds": ",".join(map(str, e.seeds)), "test_set": _test_set(e, split),
               "n_images": len(s["scored"].y), "n_patients": len(np.unique(s["scored"].patient_id))}
        for m in S.METRICS:
            vals = s["per_seed"][m]
            est = _estimate(s, m, m)
            rec.update({m: est[m], f"{m}_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"),
                        f"{m}_lo": est[f"{m}_lo"], f"{m}_hi": est[f"{m}_hi"]})
        for x in extras:
            if e.name in extra_sums[x]:
                rec.update(_estimate(extra_sums[x][e.name], "auc", f"auc[{x}]"))
        test_rows = e.rows[e.rows["split"] == split]
        vs_rows = e.rows[e.rows["split"] == rank_vs]
        rec.update(wall_s=float(test_rows["wall_s"].mean()), images_per_s=float(test_rows["images_per_s"].mean()),
                   gpu_hours=float(test_rows.drop_duplicates("config_hash")["gpu_hours"].sum()) if "gpu_hours" in test_rows else 0.0,
                   _vs=float(vs_rows[sort].mean()) if sort in vs_rows and len(vs_rows) else float("nan"),
                   status="reproduced here", source=", ".join(sorted({str(g.path) for g in grids if g.name == e.grid})))
        records.append(rec)
    table = pd.DataFrame(records)
    table["rank"] = _rank(table[sort], sort).astype("Int64")
    table[f"rank_{rank_vs}"] = _rank(table["_vs"], sort).astype("Int64")
    table["rank_change"] = (table[f"rank_{rank_vs}"] - table["rank"]).astype("Int64")
    table = table.drop(columns="_vs")

    names = list(table["name"])
    entry_by_name = {e.name: e for e in es}
    ref = _reference_rows(grids, reference) if split == "test" else pd.DataFrame()
    reported = ref[ref["status"] == "reported, not reproduced"] if len(ref) else ref
    if baseline is not None:
        base = _resolve_baseline(baseline, names, entry_by_name,
                                 [*reported["label"], *reported["short"]] if len(reported) else [])
        comp = _comparison(sums, base, resampler)
        table = table.merge(comp, on="name", how="left")
        table["is_baseline"] = table["name"] == base
    if len(reported):
        rep = pd.DataFrame({"name": reported["short"], "label": reported["label"], "kind": "reported", "grid": reported["table"],
                            "test_set": reported["test_set"], "accuracy": reported["accuracy"], "f1": reported["f1"],
                            "auc": reported["auc"], "status": reported["status"], "source": reported["source"]})
        table = pd.concat([table, rep], ignore_index=True)
    table = table.sort_values(sort, ascending=sort in LOWER_IS_BETTER, na_position="last", kind="mergesort")
    table = table.reset_index(drop=True)

    entries_ = {e.name: e for e in scored}
    ablation = ablation_effects(grids, scored, sums)
    meta = {"split": split, "sort": sort, "baseline": baseline, "n_boot": n_boot, "seed": seed, "rank_vs": rank_vs,
            "method": S.method_note(n_boot, seed, clustered=clustered),
            "tests": ("paired differences against the baseline: DeLong's test for AUC (of the mean AUC over seeds; "
                      + ("clustered by patient, Obuchowski 1997" if clustered else "one image per patient") +
                      "), paired patient bootstrap for the other metrics; p-values Holm-adjusted across the table, "
                      "per metric") if baseline else None,
            "positive_class": "COVID = 1", "grids": [grid_meta(g) for g in grids],
            "reference": (reference_notes(ref) if len(ref) else [])}
    return Leaderboard(table, ablation, shortcut_audit(scored, sums, extra_sums), entries_, meta)


def reference_notes(ref: pd.DataFrame) -> list[dict]:
    return [{"table": r["table"], "label": r["label"], "short": r["short"], "test_set": r["test_set"], "source": r["source"],
             "status": r["status"], **{m: r[m] for m in ("accuracy", "f1", "auc")},
             "cell": {k.removeprefix("ref_"): v for k, v in r.items() if k.startswith("ref_") and pd.notna(v)}}
            for _, r in ref.iterrows()]


def grid_meta(g: GridResults) -> dict:
    rows = g.rows[g.rows["status"] == "finished"].drop_duplicates("config_hash")
    failed = g.rows[g.rows["status"] == "failed"]

    def values(col: str) -> str:
        return ", ".join(sorted({str(v) for v in rows[col].dropna()})) if col in rows else "?"

    final = R.finished(g.rows, "final")
    axes = {a: _levels(g, a, sorted(final[a].dropna().astype(str).unique())) for a in _axes_of(g) if a in final}
    return {"grid": g.name, "path": str(g.path), "preset": g.spec.get("preset"), "description": g.spec.get("description", ""),
            "reference": g.spec.get("reference"), "axes": axes,
            "trials": int(len(rows)), "failed_attempts": int(len(failed)),
            "seeds": values("seed"), "hardware": values("hardware"), "nodes": int(rows["node_id"].nunique()) if "node_id" in rows else 0,
            "torch": values("torch_version"), "ray": values("ray_version"), "covidct_bench": values("covidct_bench_version"),
            "git_sha": values("git_sha"),
            "finished": f"{rows['finished_at'].min()} .. {rows['finished_at'].max()}" if "finished_at" in rows else "?",
            "train_hours": float(rows["wall_s"].sum() / 3600) if "wall_s" in rows else float("nan"),
            "gpu_hours": float(rows["gpu_hours"].sum()) if "gpu_hours" in rows else 0.0}


# ---------------------------------------------------------------------------------------- ablation
def _levels(g: GridResults, axis: str, values: list[str]) -> list[str]:
    spec_axes = g.spec.get("axes") or {}
    if axis in spec_axes:
        order = [str(v) for v in spec_axes[axis]]
        return [v for v in order if v in values]
    first = next((v for v in REFERENCE_LEVELS if v in values), None)
    rest = sorted(v for v in values if v != first)
    return ([first] if first else []) + rest


def ablation_effects(grids: list[GridResults], es: list[Entry], sums: dict[str, dict]) -> pd.DataFrame:
    """Per grid, axis and value: the mean change of each metric against the axis's first value over the
    pairs of cells that differ only in that axis, with a paired bootstrap interval."""
    rows = []
    for g in grids:
        mine = [e for e in es if e.grid == g.name and e.name in sums]
        for axis in _axes_of(g):
            values = sorted({e.axes.get(axis) for e in mine if e.axes.get(axis) is not None})
            levels = _levels(g, axis, values)
            if len(levels) < 2:
                continue
            ref_level = levels[0]
            key = {}
            for e in mine:
                others = tuple(sorted((k, v) for k, v in e.axes.items() if k != axis))
                key.setdefault(others, {})[e.axes.get(axis)] = e
            for level in levels[1:]:
                pairs = [(d[level], d[ref_level]) for d in key.values() if level in d and ref_level in d]
                pairs = [(a, b) for a, b in pairs
                         if np.array_equal(sums[a.name]["scored"].image_id, sums[b.name]["scored"].image_id)]
                if not pairs:
                    continue
                row = {"grid": g.name, "axis": axis, "value": level, "versus": ref_level, "n_pairs": len(pairs),
                       "pairs": "; ".join(",".join(f"{k}={v}" for k, v in a.axes.items() if k != axis) or "-" for a, _ in pairs)}
                for m in S.METRICS:
                    point = np.mean([np.nanmean(sums[a.name]["per_seed"][m]) - np.nanmean(sums[b.name]["per_seed"][m])
                                     for a, b in pairs])
                    dist = np.mean([sums[a.name]["dist"][m] - sums[b.name]["dist"][m] for a, b in pairs], axis=0)
                    lo, hi = S.interval(dist)
                    row.update({f"delta_{m}": float(point), f"delta_{m}_lo": lo, f"delta_{m}_hi": hi})
                rows.append(row)
    return pd.DataFrame(rows)


def shortcut_audit(es: list[Entry], sums: dict[str, dict], extra_sums: dict[str, dict]) -> pd.DataFrame:
    """Cells of a ``view`` axis side by side: AUC on the full image, without the lungs, only the lungs
    (and on each extra test set). An AUC well above 0.5 without the lungs means the classifier uses
    cues outside them (a shortcut)."""
    rows: dict[tuple, dict] = {}
    for e in es:
        view = e.axes.get("view")
        if view is None or e.name not in sums:
            continue
        rest = ",".join(f"{k}={v}" for k, v in e.axes.items() if k != "view") or "-"
        row = rows.setdefault((e.grid, rest), {"grid": e.grid, "configuration": rest})
        row.update(_estimate(sums[e.name], "auc", f"auc[{view}]"))
        for x, xs in extra_sums.items():
            if e.name in xs:
                row.update(_estimate(xs[e.name], "auc", f"auc[{view}][{x}]"))
    out = pd.DataFrame(list(rows.values()))
    if len(out) and "auc[no_lungs]_lo" in out:
        out["shortcut"] = out["auc[no_lungs]_lo"] > 0.5
    return out


def to_json(lb: Leaderboard) -> str:
    def records(df: pd.DataFrame) -> list[dict]:
        return json.loads(df.to_json(orient="records", double_precision=6)) if len(df) else []

    return json.dumps({"meta": lb.meta, "leaderboard": records(lb.table), "ablation": records(lb.ablation),
                       "shortcut": records(lb.shortcut)}, indent=2, default=str)
