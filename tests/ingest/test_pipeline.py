import json

import pandas as pd
import pytest

from covidct_bench.data.manifest import load_manifest
from covidct_bench.ingest.evaluate import score_ingest
from covidct_bench.ingest.pipeline import FIGURE_COLUMNS, IngestConfig, IsolatedRunner, mark_duplicates, run_ingest
from tests.ingest.conftest import BAD


def test_scored_against_ground_truth(ingested, corpus):
    out, _ = ingested
    s = score_ingest(out, corpus[1])
    assert s["figures"] >= 15
    assert s["figure_recall"] == 1.0 and s["caption_recall"] == 1.0  # decoys and lists of figures refused
    assert s["panel_count_exact"] >= 0.9
    assert s["ct_recall"] >= 0.9 and s["ct_precision"] >= 0.85
    assert s["label_accuracy"] >= 0.95 and s["label_coverage"] >= 0.9
    assert s["version2_ct_panels"] > 0 and s["duplicate_recall"] >= 0.5


def test_outputs_have_the_documented_columns(ingested):
    out, summary = ingested
    df = pd.read_parquet(out / "figures.parquet")
    assert set(FIGURE_COLUMNS) <= set(df.columns)
    assert df["panel_id"].is_unique
    assert all((out / p).is_file() for p in df["image_path"])
    assert ((df["ct_score"] >= 0) & (df["ct_score"] <= 1)).all()
    assert (df["is_ct"] == (df["ct_score"] >= 0.5)).all()
    assert df["doi"].str.startswith("10.1101/").all()
    crop_inside = df.apply(lambda r: r.bbox[0] <= r.crop_box[0] < r.crop_box[2] <= r.bbox[2]
                           and r.bbox[1] <= r.crop_box[1] < r.crop_box[3] <= r.bbox[3], axis=1)
    assert crop_inside.all()
    summary_file = json.loads((out / "ingest.json").read_text())
    assert summary_file["documents"] == 13 and summary["panels"] == len(df)


def test_every_bad_document_is_an_error_row_and_good_ones_are_kept(ingested):
    out, summary = ingested
    errors = pd.read_parquet(out / "errors.parquet")
    for name, reason in BAD.items():
        rows = errors[errors["doc"] == name]
        assert len(rows) >= 1 and rows["reason"].str.contains(reason).any(), (name, rows.to_dict("records"))
    figures = pd.read_parquet(out / "figures.parquet")
    assert set(figures["doc"]) == {f"doc-{i:04d}.pdf" for i in range(8)}  # every good document's panels kept
    assert summary["documents_failed"] == 4


def test_manifest_of_labelled_unique_ct_panels(ingested):
    out, _ = ingested
    m = load_manifest(out)
    figures = pd.read_parquet(out / "figures.parquet")
    expected = figures[figures["is_ct"] & figures["label"].notna() & figures["duplicate_of"].isna()]
    assert len(m) == len(expected) > 10
    assert set(m["label"]) == {0, 1}
    # a paper (DOI) never spans two splits
    assert m.groupby("patient_id")["split"].nunique().max() == 1


def test_local_engine_gives_the_same_panels(corpus, ingested, tmp_path):
    out, _ = ingested
    run_ingest(corpus[0], tmp_path / "local", IngestConfig(), engine="local")
    a = pd.read_parquet(out / "figures.parquet").sort_values("panel_id")
    b = pd.read_parquet(tmp_path / "local" / "figures.parquet").sort_values("panel_id")
    assert a["panel_id"].tolist() == b["panel_id"].tolist()
    assert a["pixel_sha256"].tolist() == b["pixel_sha256"].tolist()


def test_a_document_past_the_time_limit_is_killed_and_the_worker_recovers(corpus):
    data = (corpus[0] / "doc-0001.pdf").read_bytes()
    slow = IsolatedRunner(IngestConfig(timeout_s=0.001))
    try:
        res = slow(data, "doc-0001.pdf")
        assert res["panels"] == [] and "timed out" in res["errors"][0]["reason"]
        slow.cfg = IngestConfig(timeout_s=60)
        assert slow(data, "doc-0001.pdf")["panels"]  # a fresh child serves the next document
    finally:
        slow.stop()


def test_a_failed_run_keeps_the_previous_output(corpus, tmp_path):
    out = tmp_path / "out"
    run_ingest(corpus[0], out, IngestConfig(), engine="local")
    before = (out / "figures.parquet").read_bytes()
    with pytest.raises(Exception):
        run_ingest(corpus[0] / "missing", out, IngestConfig(), engine="local")
    assert (out / "figures.parquet").read_bytes() == before


def test_mark_duplicates_exact_and_near():
    df = pd.DataFrame({"panel_id": ["a", "b", "c", "d"], "pixel_sha256": ["x", "x", "y", "z"],
                       "is_ct": [True, True, True, True],
                       "phash": ["ffff0000ffff0000", "ffff0000ffff0000", "ffff0000ffff0003", "0000ffff0000ffff"]})
    out = mark_duplicates(df, near_threshold=4)
    assert out["duplicate_of"].tolist() == [None, "a", "a", None]
    assert out["duplicate_kind"].tolist() == [None, "exact", "near", None]
