"""Grid results written with the results store's own writers, from scores drawn with a known effect
per cell, so the report can be tested without training (the grid tests cover the real pipeline)."""

from __future__ import annotations

import contextlib
import itertools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from covidct_bench.metrics import classification_metrics
from covidct_bench.tune import results as R
from covidct_bench.tune.spec import cell_id, config_hash


def draw_split(rng, n_patients: int, per_patient: int, separation: float, prefix: str) -> pd.DataFrame:
    """Images of ``n_patients`` (half COVID), logit score = separation * (2y - 1) / 2 + N(0, 1)
    with a per-patient offset, so images of one patient are correlated."""
    y_pat = np.r_[np.ones(n_patients // 2, int), np.zeros(n_patients - n_patients // 2, int)]
    offset = rng.normal(0, 0.5, n_patients)
    rows = []
    for p in range(n_patients):
        for k in range(per_patient):
            logit = separation * (2 * y_pat[p] - 1) / 2 + offset[p] + rng.normal()
            rows.append({"image_id": f"{prefix}p{p}_{k}", "patient_id": f"{prefix}p{p}", "y_true": y_pat[p],
                         "score": 1 / (1 + np.exp(-logit))})
    return pd.DataFrame(rows)


def make_grid_results(results: Path, name: str = "toy", axes: dict | None = None, seeds=(0, 1),
                      separation: dict | None = None, n_patients: int = 40, per_patient: int = 2,
                      extra: str | None = None, reference: str | None = None, seed: int = 0,
                      dataset: str = "synthetic", write_spec: bool = True) -> Path:
    """A finished grid under ``results/<name>``; ``separation`` maps a cell id to its score separation
    (default 1.5). The test images (and patients) are the same for every cell and seed."""
    axes = axes if axes is not None else {"backbone": ["resnet18", "densenet169"], "masks": ["none", "lung"]}
    separation = separation or {}
    grid_dir = results / name
    rng = np.random.default_rng(seed)
    cells = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] or [{}]
    for cell in cells:
        cid = cell_id(cell)
        for s in seeds:
            h = config_hash({"cell": cell, "grid": name}, s)
            sep = separation.get(cid, 1.5)
            val = draw_split(rng, n_patients, per_patient, sep, "v")
            test = draw_split(rng, n_patients, per_patient, sep, "t")
            # the test images are fixed; only the scores change with the cell and seed
            thr = 0.5
            base = {"grid": name, "phase": "final", "cell": cid, "config_hash": h, **{k: str(v) for k, v in cell.items()},
                    "params": "{}", "seed": s, "epochs": 3, "wall_s": 10.0 + s, "trial_s": 20.0, "images_per_s": 5.0,
                    "gpu_hours": 0.0, "hardware": "cpu: test (2 cores)", "node_id": "n1", "torch_version": "2",
                    "ray_version": "2", "git_sha": "abc", "covidct_bench_version": "0.1.0", "status": "finished",
                    "error": None, "finished_at": "2026-01-01T00:00:00+00:00", "run_dir": f"runs/{h}"}
            preds, rows = [], []
            splits = [("val", val), ("test", test)]
            if extra:
                splits.append((f"extra:{extra}", draw_split(rng, 10, 1, sep, "x")))
            for split, df in splits:
                m = classification_metrics(df["y_true"], df["score"], thr)
                rows.append({**base, "split": split, "n_images": len(df), **m, "lesion_dice": float("nan")})
                if split != "val":
                    preds.append(df.assign(split=split, y_pred=(df["score"] >= thr).astype(np.int8), epoch=2))
            R.write_rows(R.rows_file(grid_dir, "final", h), rows)
            R.write_predictions(grid_dir, h, pd.concat(preds, ignore_index=True))
            run = grid_dir / "runs" / h
            run.mkdir(parents=True, exist_ok=True)
            (run / "config.yaml").write_text(yaml.safe_dump({"dataset": dataset, "seed": s}))
    if write_spec:
        R.write_spec(grid_dir, {"name": name, "description": "toy grid", "axes": axes, "seeds": list(seeds),
                                "reference": reference}, None)
    return grid_dir


@pytest.fixture
def toy_results(tmp_path) -> Path:
    """results/ with one 2 x 2 grid, 2 seeds: densenet169 + lung separates best."""
    root = tmp_path / "results"
    make_grid_results(root, separation={"backbone=resnet18,masks=none": 0.8, "backbone=resnet18,masks=lung": 1.6,
                                        "backbone=densenet169,masks=none": 1.2, "backbone=densenet169,masks=lung": 2.4})
    return root


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def chromium() -> tuple[str, str] | None:
    browser = next((b for b in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if b), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def headless_chromium():
    """A selenium driver on a real headless Chromium (``chromium()`` must not be None)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1800")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
