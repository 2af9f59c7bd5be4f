"""Storage locations over pyarrow filesystems: a local folder, a file:// URI, and an object store
(pyarrow's PyFileSystem over fsspec's in-memory filesystem: not local, so writes go up in one put and
reads come down into the cache, as with s3:// or gs://)."""

from __future__ import annotations

import pandas as pd
import pyarrow.fs as pafs
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from covidct_bench.errors import BenchError
from covidct_bench.models.backbones import load_run_file
from covidct_bench.storage import Location, is_uri
from covidct_bench.tune import results as R


@pytest.fixture(params=["path", "file-uri", "object-store"])
def where(request, tmp_path, monkeypatch) -> Location:
    monkeypatch.setenv("COVIDCT_BENCH_CACHE", str(tmp_path / "cache"))
    if request.param == "path":
        return Location.of(tmp_path / "store")
    if request.param == "file-uri":
        return Location.of(f"file://{tmp_path}/store")
    MemoryFileSystem.store.clear()
    return Location(pafs.PyFileSystem(pafs.FSSpecHandler(MemoryFileSystem())), "/bucket/store", "memory")


def test_uri_parsing_keeps_the_scheme_and_paths_stay_paths(tmp_path):
    loc = Location.of(f"file://{tmp_path}/a")
    assert loc.scheme == "file" and loc.uri == f"file://{tmp_path}/a" and loc.is_local and loc.local == tmp_path / "a"
    assert (loc / "rows" / "x.parquet").uri == f"file://{tmp_path}/a/rows/x.parquet"
    plain = Location.of(tmp_path / "b")
    assert plain.scheme == "" and plain.uri == str(tmp_path / "b") and plain.for_ray() == (str(tmp_path / "b"), None)
    path, fs = loc.for_ray()
    assert path == str(tmp_path / "a") and isinstance(fs, pafs.LocalFileSystem)  # a URI hands Ray its filesystem
    assert is_uri("s3://bucket/x") and not is_uri("results") and not is_uri("/abs/path")
    with pytest.raises(BenchError, match=r"nope://x: not a storage URI"):
        Location.of("nope://x")


def test_write_list_read_delete(where):
    (where / "rows" / "b.parquet").write_bytes(b"2")
    (where / "rows" / "a.parquet").write_bytes(b"1")
    (where / "rows" / "c.json").write_text("{}")
    assert [x.name for x in (where / "rows").glob("*.parquet")] == ["a.parquet", "b.parquet"]
    assert (where / "rows").is_dir() and (where / "rows" / "a.parquet").is_file()
    assert (where / "rows" / "a.parquet").read_bytes() == b"1" and (where / "rows" / "a.parquet").stem == "a"
    assert (where / "nothing").glob("*") == [] and not (where / "nothing").exists()
    (where / "rows" / "a.parquet").unlink()
    (where / "rows" / "a.parquet").unlink()  # missing is fine
    assert [x.name for x in (where / "rows").iterdir()] == ["b.parquet", "c.json"]
    (where / "rows").rmtree()
    assert not (where / "rows" / "b.parquet").exists()


def test_a_failed_write_keeps_the_old_file(where):
    target = where / "spec.yaml"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with target.writing() as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"


def test_results_store_round_trip(where):
    R.write_rows(R.rows_file(where, "final", "abc"), [{"grid": "g", "phase": "final", "cell": "c", "config_hash": "abc",
                                                       "split": "test", "auc": 0.75, "status": "finished"}])
    R.write_predictions(where, "abc", pd.DataFrame({"image_id": ["i"], "patient_id": ["p"], "split": ["test"],
                                                    "y_true": [1], "score": [0.9], "y_pred": [1]}))
    R.write_spec(where, {"name": "g", "axes": {"backbone": ["resnet18"]}}, "smoke")
    df = R.read_results(where)
    assert len(df) == 1 and df["auc"].iloc[0] == 0.75 and df["schema_version"].iloc[0] == R.SCHEMA_VERSION
    assert R.read_predictions(where, "abc")["score"].tolist() == [0.9]
    assert R.read_spec(where)["preset"] == "smoke"
    (where / "rows" / "final-bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(BenchError, match=r"final-bad.parquet: not a readable results file"):
        R.read_results(where)


def test_upload_download_and_cached_local_copy(where, tmp_path):
    import torch

    src = tmp_path / "stage"
    (src / "sub").mkdir(parents=True)
    (src / "summary.json").write_text("{}")
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"backbone": "x"}}, src / "backbone.pt")
    (src / "sub" / "x.txt").write_text("x")
    run = where / "_pretrain" / "h1"
    run.upload(src)
    assert sorted(p.name for p in run.iterdir()) == ["backbone.pt", "sub", "summary.json"]
    got = run.download(tmp_path / "down", keep=lambda rel: rel.endswith(".json"))
    assert [p.name for p in got.rglob("*") if p.is_file()] == ["summary.json"]
    # a run folder given as a URI is read where it is (a CSSL init on another node): one cached download
    state, meta = load_run_file(run if run.scheme == "memory" else run.uri, "backbone.pt", "--init cssl", "a CSSL backbone")
    assert torch.equal(state["w"], torch.ones(2)) and meta == {"backbone": "x"}
    first = (run / "backbone.pt").local_copy()
    assert first.is_file() and (run / "backbone.pt").local_copy() == first
    if not run.is_local:  # replaced remotely: fetched again
        assert str(first).startswith(str(tmp_path / "cache"))
        (run / "backbone.pt").write_bytes(b"new content")
        assert (run / "backbone.pt").local_copy() != first

