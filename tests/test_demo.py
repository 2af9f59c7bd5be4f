"""`covidct-bench demo` end to end at its smallest preset, as a user runs it: interrupted with Ctrl-C
during the grid, then the same command again, which continues and finishes.

One test on purpose: the demo is PDFs -> Ray Data ingest -> a Ray Tune grid of 8 Ray Train jobs, the
longest thing in the suite, and the rerun is what shows that finished steps and trials are reused.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import yaml

from covidct_bench.tune.results import read_results
from tests.report.conftest import chromium, headless_chromium

CLI = [sys.executable, "-m", "covidct_bench.cli"]
CELLS = {f"backbone={b},masks={m}" for b in ("resnet18", "regnet_y_400mf") for m in ("none", "lung")}
SEEDS = {0, 1}


def _finished_rows(out: Path) -> list[Path]:
    return sorted((out / "results" / "demo" / "rows").glob("final-*.parquet"))


def _checkpointed_unfinished(out: Path) -> list[Path]:
    """Run folders of trials with a checkpoint Train has registered and no result row yet."""
    done = {f.stem.split("-", 1)[1] for f in _finished_rows(out)}
    found = []
    for run in sorted((out / "results" / "demo" / "runs").glob("*")):
        snapshot = run / "checkpoints" / "checkpoint_manager_snapshot.json"
        if run.name in done or not snapshot.is_file():
            continue
        try:  # registered: the snapshot lists it (a checkpoint folder alone may still be uploading)
            if json.loads(snapshot.read_text()).get("checkpoint_results"):
                found.append(run)
        except ValueError:
            continue
    return found


class _Tags(HTMLParser):
    """Counts start tags and collects text: html.parser is strict enough to catch a truncated page."""

    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1

    def handle_data(self, data):
        self.text.append(data)


def test_demo_tiny_interrupted_then_rerun_finishes_with_consistent_outputs(tmp_path):
    out = tmp_path / "demo"
    cmd = [*CLI, "demo", "--out", str(out), "--preset", "tiny"]
    env = {**os.environ, "COLUMNS": "200"}
    # 1. Ctrl-C once a trial has finished and another is past its first checkpoint: a terminal sends
    #    SIGINT to the whole process group
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    t0 = time.monotonic()
    while not (_finished_rows(out) and _checkpointed_unfinished(out)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - t0 < 600, "no grid trial finished in 10 minutes"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=180)
    victims = _checkpointed_unfinished(out)  # stopped mid-run: the rerun must continue them, not start over
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted:" in stderr and "again to continue" in stderr and "Traceback" not in stderr
    assert "[1/5] corpus" in stdout and "[4/5] grid" in stdout
    kept = {p: p.stat().st_mtime_ns for p in _finished_rows(out)}
    assert 1 <= len(kept) < 8
    first = {p: p.stat().st_mtime_ns for p in (out / "pdfs" / "ground_truth.json", out / "ingest" / "ingest.json",
                                              out / "ingest" / "masks" / "classical" / "index.parquet")}
    assert not (out / "report.html").exists()

    # 2. the same command again: corpus, ingest and masks reused, finished trials not rerun, the rest finish
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"corpus reused", p.stdout) and re.search(r"ingest reused", p.stdout), p.stdout[-3000:]
    assert f"{len(kept)} trial(s) already finished" in p.stdout
    assert {f: f.stat().st_mtime_ns for f in first} == first
    assert {f: f.stat().st_mtime_ns for f in kept} == kept
    # a trial Ctrl-C stopped between its checkpoints continues from the last one (with 2 epochs a trial is
    # often past its last checkpoint by the time Tune stops it; then it has finished and is in `kept`)
    for run in victims:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["resumed_at_epochs"] and summary["resumed_at_epochs"][0] >= 1, run

    # what ingest found: documents, figures, CT panels, labels, errors; scored against the ground truth
    assert "found in the PDFs" in p.stdout and "CT detection precision" in p.stdout
    summary = json.loads((out / "ingest" / "ingest.json").read_text())
    assert summary["documents"] == 30 and summary["documents_failed"] == 0 and summary["ct_panels"] > 0
    manifest = pd.read_parquet(out / "ingest" / "manifest.parquet")
    assert set(manifest["split"]) == {"train", "val", "test"} and set(manifest["label"]) == {0, 1}
    audit = json.loads((out / "audit.json").read_text())
    assert audit["images"] == len(manifest) and audit["patient_leakage"] == 0
    assert len(pd.read_parquet(out / "ingest" / "masks" / "classical" / "index.parquet")) == len(manifest)

    # the grid trained on the ingested panels: rows = cells x seeds, each (trial, split) once
    spec = yaml.safe_load((out / "grid.yaml").read_text())
    assert spec["fixed"]["dataset"] == str((out / "ingest").resolve())
    df = read_results(out / "results" / "demo")
    final = df[(df["phase"] == "final") & (df["status"] == "finished")]
    assert final["config_hash"].nunique() == len(CELLS) * len(SEEDS) == 8
    assert final.groupby(["config_hash", "split"]).size().max() == 1 and set(final["split"]) == {"val", "test"}
    assert {c: set(g["seed"]) for c, g in final.groupby("cell")} == {c: SEEDS for c in CELLS}
    test = final[final["split"] == "test"]
    assert (test["n_images"] == int((manifest["split"] == "test").sum())).all()
    assert test["auc"].between(0, 1).all() and (test["epochs"] == 2).all()
    # another seed, the same configuration: other scores
    from covidct_bench.tune.results import read_predictions

    cell = test[test["cell"] == "backbone=resnet18,masks=none"].sort_values("seed")
    scores = [read_predictions(out / "results" / "demo", h).query("split == 'test'").sort_values("image_id")["score"].to_numpy()
              for h in cell["config_hash"]]
    assert len(scores) == 2 and len(scores[0]) == len(scores[1]) and not (scores[0] == scores[1]).all()

    # leaderboard: one row per cell, over both seeds, with intervals; the same in the Markdown file
    lb = subprocess.run([*CLI, "leaderboard", str(out / "results"), "--format", "json", "--boot", "200"],
                        capture_output=True, text=True, timeout=300)
    assert lb.returncode == 0, lb.stderr[-3000:]
    ours = [r for r in json.loads(lb.stdout)["leaderboard"] if r["kind"] == "ours"]
    assert {r["cell"] for r in ours} == CELLS and all(r["n_seeds"] == 2 for r in ours)
    assert all(0 <= r["auc_lo"] <= r["auc_hi"] <= 1 for r in ours)
    md = (out / "leaderboard.md").read_text()
    assert all(c in md for c in CELLS)
    for c in CELLS:
        assert c in p.stdout  # the terminal leaderboard

    # the HTML report: a whole page with the 4 configurations and its figures
    page = (out / "report.html").read_text()
    tags = _Tags()
    tags.feed(page)
    tags.close()
    assert page.rstrip().endswith("</html>") and tags.tags.get("svg", 0) >= 3
    assert all(c in "".join(tags.text) for c in CELLS)
    if chromium() is not None:
        from selenium.webdriver.common.by import By

        with headless_chromium() as driver:
            driver.get((out / "report.html").as_uri())
            rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr:not(.reported)")
            assert len(rows) == len(CELLS)
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-rendered")  # the script ran

    # the summary: where every output is and what to try next; the state file records each step
    for needle in ("outputs", "try next", "report.html", "--dataset covid-ct", "paper_table5", "cluster"):
        assert needle in p.stdout, needle
    state = json.loads((out / "demo.json").read_text())
    assert list(state["steps"]) == ["corpus", "ingest", "dataset", "grid", "report"]
    assert state["steps"]["corpus"]["reused"] and state["steps"]["grid"]["ran"] == 8 - len(kept)


def test_demo_bad_options_are_one_line(tmp_path):
    for args, needle in ((["--source", str(tmp_path)], "--source: only with --dataset covid-ct"),
                         (["--root", str(tmp_path)], "--root: only with --dataset covid-ct"),
                         (["--preset", "huge"], "preset"), (["--dataset", "mnist"], "dataset")):
        p = subprocess.run([*CLI, "demo", "--out", str(tmp_path / "d"), *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and p.stderr.startswith("error:") and needle in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1
    assert not (tmp_path / "d").exists()
