"""Leaderboard, comparison, ablation view, exports and bad input, on results written by the store's writers."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console

from covidct_bench.errors import BenchError
from covidct_bench.report import render
from covidct_bench.report.leaderboard import build
from covidct_bench.tune import results as R
from tests.report.conftest import make_grid_results

BEST, WORST = "backbone=densenet169,masks=lung", "backbone=resnet18,masks=none"


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "covidct_bench.cli", "leaderboard", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300, env={**os.environ, "COLUMNS": "200"})


def test_rows_are_configurations_with_seed_spread_and_patient_intervals(toy_results):
    lb = build([toy_results], n_boot=500)
    ours = lb.table[lb.table["kind"] == "ours"]
    assert len(ours) == 4 and set(ours["n_seeds"]) == {2}
    assert list(ours["rank"]) == [1, 2, 3, 4]  # sorted by AUC
    assert ours.iloc[0]["name"] == BEST and ours.iloc[-1]["name"] == WORST
    rows = R.read_results(toy_results / "toy")
    for _, r in ours.iterrows():
        test = rows[(rows["cell"] == r["cell"]) & (rows["split"] == "test")]
        # metrics recomputed from the stored predictions agree with the rows the trials wrote
        for m in ("accuracy", "f1", "auc", "sensitivity", "specificity"):
            assert r[m] == pytest.approx(test[m].mean(), abs=1e-6), m
            assert r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"], m
        assert r["auc_sd"] == pytest.approx(test["auc"].std(ddof=1), abs=1e-6)
        assert r["n_images"] == 80 and r["n_patients"] == 40
    assert "patients" in lb.meta["method"] and "500 resamples" in lb.meta["method"]


def test_reference_rows_are_marked_reported_with_their_test_set(toy_results):
    lb = build([toy_results], n_boot=200)
    rep = lb.table[lb.table["kind"] == "reported"]
    densenet = rep[rep["name"] == "DenseNet-169 ImageNet (upstream)"].iloc[0]
    assert (densenet["accuracy"], densenet["f1"], densenet["auc"]) == (0.847, 0.854, 0.919)
    assert densenet["status"] == "reported, not reproduced" and "official test split" in densenet["test_set"]
    assert rep["rank"].isna().all()  # never ranked among ours
    md = render.markdown(lb)
    assert "*DenseNet-169 ImageNet (upstream)* †" in md
    assert ("† DenseNet-169 ImageNet (upstream): DenseNet-169, ImageNet transfer (upstream baseline); reported, not "
            "reproduced; test set: COVID-CT official test split") in md


def test_baseline_comparison_with_paired_tests_and_holm(toy_results):
    lb = build([toy_results], baseline=WORST, n_boot=1000)
    t = lb.table.set_index("name")
    assert bool(t.loc[WORST, "is_baseline"]) and pd.isna(t.loc[WORST, "delta_auc"])
    best = t.loc[BEST]
    assert best["delta_auc"] == pytest.approx(best["auc"] - t.loc[WORST, "auc"])
    assert best["delta_auc_lo"] > 0 and best["p_auc"] < 0.01  # separation 2.4 vs 0.8 on 80 images x 2 seeds
    ours = t[t["kind"] == "ours"].drop(index=WORST)
    for m in ("auc", "accuracy", "f1"):
        assert (ours[f"p_{m}_holm"] >= ours[f"p_{m}"] - 1e-12).all()
        assert (ours[f"p_{m}_holm"] <= 1).all()
    # the smallest p gets multiplied by the family size (3 comparisons)
    assert ours["p_auc_holm"].min() == pytest.approx(min(1, 3 * ours["p_auc"].min()))


def test_a_configuration_against_itself_differs_by_nothing(tmp_path):
    make_grid_results(tmp_path / "results", name="same", axes={"masks": ["none", "lung"]}, seeds=(0,),
                      separation={"masks=none": 1.0, "masks=lung": 1.0}, seed=3)
    # give both cells identical predictions
    preds = sorted((tmp_path / "results" / "same" / "predictions").glob("*.parquet"))
    a = pd.read_parquet(preds[0])
    b = pd.read_parquet(preds[1])
    a.assign(config_hash=b["config_hash"]).to_parquet(preds[1], index=False)
    lb = build([tmp_path / "results"], baseline="masks=none", n_boot=300)
    other = lb.table[(lb.table["kind"] == "ours") & (lb.table["name"] != "masks=none")].iloc[0]
    assert other["delta_auc"] == 0 and other["p_auc"] == 1.0 and other["p_accuracy"] == 1.0
    assert (other["delta_auc_lo"], other["delta_auc_hi"]) == (0.0, 0.0)


def test_ablation_view_reports_each_axis_value_against_the_first(toy_results):
    lb = build([toy_results], n_boot=1000)
    ab = lb.ablation.set_index(["axis", "value"])
    lung = ab.loc[("masks", "lung")]
    assert lung["versus"] == "none" and lung["n_pairs"] == 2
    t = lb.table.set_index("name")
    expected = np.mean([t.loc[f"backbone={b},masks=lung", "auc"] - t.loc[f"backbone={b},masks=none", "auc"]
                        for b in ("resnet18", "densenet169")])
    assert lung["delta_auc"] == pytest.approx(expected)
    assert lung["delta_auc_lo"] > 0  # lung adds 0.8-1.2 of separation in both pairs
    assert ab.loc[("backbone", "densenet169"), "versus"] == "resnet18"  # the spec's first value, not alphabetical
    md = render.markdown(lb)
    assert "**masks: none → lung** (toy, 2 pair(s))" in md


def test_without_a_kept_spec_axes_come_from_the_cell_ids(tmp_path):
    make_grid_results(tmp_path / "r", name="old", axes={"masks": ["lung", "none"]}, seeds=(0,), write_spec=False)
    lb = build([tmp_path / "r"], n_boot=200)
    assert list(lb.ablation["versus"]) == ["none"]  # "none" is the natural reference level
    assert lb.meta["grids"][0]["reference"] is None


def test_extra_test_sets_and_the_shortcut_audit(tmp_path):
    make_grid_results(tmp_path / "results", name="shortcut", axes={"view": ["full", "no_lungs", "lungs_only"]},
                      separation={"view=full": 2.0, "view=no_lungs": 1.6, "view=lungs_only": 0.0}, extra="medseg",
                      n_patients=60)
    lb = build([tmp_path / "results"], n_boot=1000)
    assert "auc[extra:medseg]" in lb.table and lb.table["auc[extra:medseg]"].notna().sum() == 3
    sc = lb.shortcut.iloc[0]
    assert sc["auc[no_lungs]_lo"] > 0.5 and bool(sc["shortcut"])  # no lungs, still well above chance
    assert sc["auc[lungs_only]_lo"] < 0.5 < sc["auc[lungs_only]_hi"]
    assert "auc[no_lungs][extra:medseg]" in lb.shortcut
    on_extra = build([tmp_path / "results"], n_boot=200, split="extra:medseg", baseline="view=full")
    assert on_extra.meta["rank_vs"] == "test" and (on_extra.table["kind"] == "ours").all()  # no paper rows off test
    assert "**view=full** (baseline)" in render.markdown(on_extra)
    out = io.StringIO()
    render.terminal(lb, Console(file=out, width=200))
    assert "shortcut audit" in out.getvalue() and "AUC medseg" in out.getvalue()


def test_paper_layout_puts_reported_numbers_beside_ours(toy_results, tmp_path):
    ref = yaml.safe_load((R.Path(__file__).resolve().parents[2] / "ablations/reference/paper.yaml").read_text())
    ref["rows"].append({"table": "toy", "cell": {"backbone": "resnet18", "masks": "none"}, "accuracy": 0.701,
                        "f1": 0.702, "auc": 0.703, "test_set": "toy test", "transcribed_from": "test fixture"})
    ref["rows"].append({"table": "toy", "cell": {"backbone": "resnet18", "masks": "lung"}})
    spec = R.read_spec(toy_results / "toy")
    R.write_spec(toy_results / "toy", {**spec, "reference": "table7"}, None)  # shipped: cells listed, none transcribed
    md = render.markdown(build([toy_results], n_boot=200))
    assert "the paper's table7 numbers are not transcribed" in md and "(n/t)" not in md
    R.write_spec(toy_results / "toy", {**spec, "reference": "toy"}, None)
    path = tmp_path / "ref.yaml"
    path.write_text(yaml.safe_dump(ref))
    lb = build([toy_results], n_boot=200, reference=path)
    md = render.markdown(lb)
    layout = md[md.index("## In the paper's layout"):]
    assert "| backbone | Acc (masks=none) | F1 (masks=none) | AUC (masks=none) | Acc (masks=lung)" in layout
    resnet = next(line for line in layout.splitlines() if line.startswith("| resnet18"))
    assert "(0.701)" in resnet and "(0.703)" in resnet and "(n/t)" in resnet
    assert lb.table[lb.table["name"] == "backbone=resnet18,masks=none"].shape[0] == 1
    assert "toy test" in " ".join(lb.table["test_set"].dropna())  # the transcribed cell is also a reported row


def test_exports_csv_json_markdown_and_table(toy_results, tmp_path):
    from covidct_bench.report.leaderboard import to_json

    csv_out = tmp_path / "lb.csv"
    r = cli(toy_results, "--format", "csv", "--out", csv_out, "--boot", 300, "--baseline", WORST)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(csv_out)
    assert {"auc", "auc_lo", "auc_hi", "auc_sd", "rank", "rank_change", "delta_auc", "p_auc_holm", "kind"} <= set(df.columns)
    assert (df["kind"] == "ours").sum() == 4
    lb = build([toy_results], baseline=WORST, n_boot=300)
    data = json.loads(to_json(lb))
    assert data["meta"]["n_boot"] == 300 and len(data["leaderboard"]) == len(df) and data["ablation"]
    np.testing.assert_allclose(pd.DataFrame(data["leaderboard"])["auc"], df["auc"], atol=1e-6)
    assert render.markdown(lb).startswith("## Leaderboard (test split, sorted by auc)")
    r = cli(toy_results, "--sort", "accuracy", "--boot", 200)
    assert r.returncode == 0 and "sorted by accuracy" in r.stdout and BEST in r.stdout


def test_several_results_folders_and_grid_filter(tmp_path):
    make_grid_results(tmp_path / "a", name="g1", axes={"masks": ["none", "lung"]}, seeds=(0,))
    make_grid_results(tmp_path / "b", name="g2", axes={"backbone": ["resnet18"]}, seeds=(0, 1, 2))
    lb = build([tmp_path / "a", tmp_path / "b" / "g2"], n_boot=200)
    ours = lb.table[lb.table["kind"] == "ours"]
    assert set(ours["name"]) == {"g1/masks=none", "g1/masks=lung", "g2/backbone=resnet18"}
    assert len(lb.meta["grids"]) == 2
    assert set(build([tmp_path / "a", tmp_path / "b"], grid="g2", n_boot=200).table.query("kind == 'ours'")["name"]) == {"backbone=resnet18"}
    # a grid still running its search (no final trial yet) is left out of a folder of grids
    R.write_failure(tmp_path / "a" / "g3", {"grid": "g3", "phase": "search", "cell": "default", "config_hash": "x", "seed": 0}, "boom")
    assert len(build([tmp_path / "a"], n_boot=200).meta["grids"]) == 1
    with pytest.raises(BenchError, match="g3: no finished final trial yet"):
        build([tmp_path / "a" / "g3"], n_boot=200)
    make_grid_results(tmp_path / "c", name="g1", axes={"masks": ["none"]}, seeds=(0,))
    with pytest.raises(BenchError, match="grid 'g1' found twice"):
        build([tmp_path / "a", tmp_path / "c"], n_boot=200)


def _rewrite_first(grid_dir, fn):
    f = sorted((grid_dir / "rows").glob("*.parquet"))[0]
    fn(pd.read_parquet(f)).to_parquet(f, index=False)
    return f


@pytest.mark.parametrize("case, message", [
    ("missing", "no such results directory"),
    ("empty", "no grid results here"),
    ("no_final", "no finished final trial yet"),
    ("column", r"rows/.*\.parquet: missing column\(s\) auc"),
    ("schema", "results schema version 0, older than the version 1"),
    ("baseline", "--baseline nope: no such row"),
    ("reported", "a reported row has no predictions"),
    ("predictions", r"predictions/.*\.parquet: missing"),
    ("sort", "--sort loss: not a leaderboard column"),
    ("grid", "--grid other: not among the grids found"),
    ("split", "--split extra:nih: no predictions on that split"),
])
def test_bad_input_is_a_one_line_error(tmp_path, case, message):
    root = tmp_path / "results"
    g = make_grid_results(root, name="toy", axes={"masks": ["none", "lung"]}, seeds=(0,))
    paths, kw = [root], {}
    if case == "missing":
        paths = [tmp_path / "nope"]
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        paths = [tmp_path / "empty"]
    elif case == "no_final":
        for f in (g / "rows").glob("*.parquet"):
            f.unlink()
        R.write_failure(g, {"grid": "toy", "phase": "final", "cell": "masks=none", "config_hash": "abc", "seed": 0}, "boom")
    elif case == "column":
        _rewrite_first(g, lambda df: df.drop(columns="auc"))
    elif case == "schema":
        _rewrite_first(g, lambda df: df.assign(schema_version=0))
    elif case == "predictions":
        sorted((g / "predictions").glob("*.parquet"))[0].unlink()
    else:
        kw = {"baseline": {"baseline": "nope", "reported": "DenseNet-169, ImageNet transfer (upstream baseline)"}.get(case),
              "sort": "loss" if case == "sort" else "auc", "grid": "other" if case == "grid" else None,
              "split": "extra:nih" if case == "split" else "test"}
    with pytest.raises(BenchError) as err:
        build(paths, n_boot=200, **kw)
    assert re.search(message, str(err.value)) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("args, message", [(["--baseline", "nope"], "--baseline nope: no such row"),
                                           (["--format", "pdf"], "--format pdf: choose from")])
def test_cli_bad_input_exits_1_with_one_line_and_keeps_the_earlier_output(tmp_path, args, message):
    root = tmp_path / "results"
    make_grid_results(root, name="toy", axes={"masks": ["none", "lung"]}, seeds=(0,))
    out = tmp_path / "report.md"
    out.write_text("an earlier report")
    r = cli(root, *args, "--boot", 200, "--out", out)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert out.read_text() == "an earlier report"


def test_only_the_trials_of_the_spec_a_grid_last_ran_are_shown(tmp_path):
    """A grid run again at another preset (other config hashes) keeps the earlier rows on disk, and the
    leaderboard shows the trials of the spec it last ran, not both mixed into one row per cell."""
    from covidct_bench.tune.spec import config_hash

    results = tmp_path / "results"
    make_grid_results(results, seeds=(0, 1))
    grid = make_grid_results(results, seeds=(2, 3), seed=1)
    assert all(r["n_seeds"] == 4 for r in build([results], n_boot=100).table.to_dict("records") if r["kind"] == "ours")
    axes = {"backbone": ["resnet18", "densenet169"], "masks": ["none", "lung"]}
    latest = [config_hash({"cell": {"backbone": b, "masks": m}, "grid": "toy"}, s)
              for b in axes["backbone"] for m in axes["masks"] for s in (2, 3)]
    R.write_spec(grid, {"name": "toy", "axes": axes, "seeds": [2, 3]}, "cpu", final_trials=latest)
    ours = [r for r in build([results], n_boot=100).table.to_dict("records") if r["kind"] == "ours"]
    assert len(ours) == 4 and all(r["n_seeds"] == 2 and r["seeds"] in ("2,3", [2, 3]) for r in ours), ours[0]
    assert len(R.read_results(grid)) == 4 * 4 * 2  # nothing deleted: 4 cells x 4 seeds x (val, test)
