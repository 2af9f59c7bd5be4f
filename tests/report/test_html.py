"""The HTML report is one self-contained file, and it renders in a real headless Chromium."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from covidct_bench.report import html
from covidct_bench.report.leaderboard import build
from tests.report.conftest import chromium, headless_chromium, make_grid_results

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("html") / "results"
    make_grid_results(root, separation={"backbone=resnet18,masks=none": 0.8, "backbone=resnet18,masks=lung": 1.6,
                                        "backbone=densenet169,masks=none": 1.2, "backbone=densenet169,masks=lung": 2.4},
                      extra="medseg")
    r = subprocess.run([sys.executable, "-m", "covidct_bench.cli", "leaderboard", root, "--format", "html", "--boot", "500",
                        "--baseline", "backbone=resnet18,masks=none"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = root / "report.html"
    assert out.is_file()
    return out


def test_report_is_self_contained(report):
    text = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing loaded from anywhere
    assert not re.search(r"<link\b|@import|url\((?!#)", text)  # url(#id): a clip path inside the page
    assert "<script src" not in text
    assert text.count("<svg") == 4  # bars, ROC, calibration, ablation forest plot
    for section in ("Leaderboard", "Figures", "Ablation effects", "Runs"):
        assert f"<h2>{section}</h2>" in text
    assert "reported" in text and "COVID-CT official test split" in text  # paper rows and their test set
    assert "cpu: test (2 cores)" in text and "abc" in text  # run metadata: hardware, git sha


@pytest.mark.skipif(chromium() is None, reason="chromium / chromedriver not installed (.ci/run installs them)")
def test_report_renders_and_sorts_in_headless_chromium(report, tmp_path):
    from selenium.webdriver.common.by import By

    with headless_chromium() as driver:
        driver.get(report.as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
        assert len(rows) == 7  # 4 configurations + 3 reported rows
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-rendered") == "7"  # the script ran
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0  # no fetch
        assert all(s.size["width"] > 200 for s in driver.find_elements(By.CSS_SELECTOR, "figure svg"))
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        img = np.asarray(Image.open(shot).convert("L"))
        assert img.shape[1] >= 1000 and img.std() > 10  # something was drawn, not a blank page

        headers = driver.find_elements(By.CSS_SELECTOR, "#leaderboard thead th")
        auc_col = [h.text.split()[0] if h.text else "" for h in headers].index("AUC")

        def column(i: int) -> list[float]:
            cells = driver.find_elements(By.CSS_SELECTOR, f"#leaderboard tbody tr td:nth-child({i + 1})")
            return [float(c.get_attribute("data-v")) for c in cells if c.get_attribute("data-v")]

        headers[auc_col].click()
        desc = column(auc_col)
        assert desc == sorted(desc, reverse=True) and len(desc) == 7
        headers[auc_col].click()
        asc = column(auc_col)
        assert asc == sorted(asc)
        seeds_col = [h.text.split()[0] if h.text else "" for h in headers].index("seeds")
        headers[seeds_col].click()  # reported rows have no seeds: they sort last
        last = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")[-1]
        assert "reported" in last.get_attribute("class")


def test_html_write_keeps_the_old_report_when_rendering_fails(tmp_path):
    root = tmp_path / "results"
    make_grid_results(root, axes={"masks": ["none"]}, seeds=(0,))
    lb = build([root], n_boot=200)
    out = tmp_path / "report.html"
    out.write_text("old report")
    lb.meta["grids"] = None  # a broken leaderboard: rendering raises
    with pytest.raises(TypeError):
        html.write(lb, out)
    assert out.read_text() == "old report" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
