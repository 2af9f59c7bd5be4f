import shutil

import pandas as pd
import pytest

from covidct_bench.data.manifest import load_manifest
from covidct_bench.errors import BenchError
from covidct_bench.ingest.review import apply_review, write_review


@pytest.fixture
def reviewed(ingested, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ingested[0], out)
    html, csv = write_review(out)
    return out, html, csv


def test_gallery_shows_every_panel(reviewed):
    out, html, csv = reviewed
    page = html.read_text()
    rows = pd.read_csv(csv)
    assert page.count("<figure") == len(rows)
    assert all(p in page for p in rows["image_path"])
    assert set(rows["label"]) <= {"covid", "non_covid", "unknown"}


def test_review_round_trip_changes_the_manifest(reviewed):
    out, _, csv = reviewed
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    before = load_manifest(out)
    flip = rows.index[(rows["is_ct"] == "True") & (rows["label"] == "covid") & (rows["duplicate_of"] == "")][0]
    rows.loc[flip, "label"] = "non_covid"
    add = rows.index[rows["is_ct"] == "False"][0]
    rows.loc[add, ["is_ct", "label"]] = ["true", "covid"]
    rows.to_csv(csv, index=False)
    r = apply_review(out, csv)
    assert r["label"] == 2 and r["is_ct"] == 1
    m = load_manifest(out).set_index("image_id")
    assert m.loc[rows.loc[flip, "panel_id"], "label"] == 0
    assert m.loc[rows.loc[add, "panel_id"], "label"] == 1
    assert len(m) == len(before) + 1
    fig = pd.read_parquet(out / "figures.parquet").set_index("panel_id")
    assert fig.loc[rows.loc[flip, "panel_id"], "label_source"] == "review"


def test_a_bad_row_is_named_and_changes_nothing(reviewed):
    out, _, csv = reviewed
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    rows.loc[0, "label"] = "covid"
    rows.loc[3, "label"] = "maybe"
    rows.to_csv(csv, index=False)
    before = (out / "figures.parquet").read_bytes(), (out / "manifest.parquet").read_bytes()
    with pytest.raises(BenchError, match=r"row 5: label 'maybe'"):
        apply_review(out, csv)
    assert ((out / "figures.parquet").read_bytes(), (out / "manifest.parquet").read_bytes()) == before
