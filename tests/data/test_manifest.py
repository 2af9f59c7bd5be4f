import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covidct_bench.data import load_manifest, read_manifest, write_manifest
from covidct_bench.errors import BenchError


def _rows(n=3):
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "dataset": "t", "path": [f"{k}.png" for k in range(n)],
                         "label": [0, 1, 1][:n], "patient_id": "p", "split": "train", "source": "s",
                         "width": 4, "height": 4, "sha256": "x"})


def test_roundtrip_with_schema(tmp_path):
    write_manifest(_rows(), tmp_path / "manifest.parquet")
    df = read_manifest(tmp_path)
    assert df.attrs["root"] == str(tmp_path) and df.label.dtype == "int8"
    assert {"lung_mask_path", "lesion_mask_path", "caption", "age", "sex", "phash"} <= set(df.columns)
    assert pq.read_schema(tmp_path / "manifest.parquet").metadata[b"covidct_bench.manifest_version"] == b"1"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.drop(columns="split"), "missing column"),
    (lambda d: d.assign(label=[0, 2, 1]), r"row 1 \(i1\) has label 2"),
    (lambda d: d.assign(split=["train", "dev", "test"]), r"row 1 \(i1\) has split 'dev'"),
    (lambda d: d.assign(image_id=["a", "a", "b"]), "image_id 'a' appears more than once"),
    (lambda d: d.assign(patient_id=["p", None, "q"]), "row 1 has no patient_id"),
])
def test_bad_rows_are_named_and_nothing_is_overwritten(tmp_path, mutate, message):
    path = write_manifest(_rows(), tmp_path / "manifest.parquet")
    before = path.read_bytes()
    with pytest.raises(BenchError, match=message):
        write_manifest(mutate(_rows()), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["manifest.parquet"]


def test_old_schema_version_and_missing_manifest(tmp_path):
    pq.write_table(pa.Table.from_pandas(_rows()), tmp_path / "manifest.parquet")
    with pytest.raises(BenchError, match="schema version"):
        read_manifest(tmp_path)
    with pytest.raises(BenchError, match="not found; run `covidct-bench data fetch covid-ct"):
        load_manifest("covid-ct", tmp_path / "nowhere")
    with pytest.raises(BenchError, match=r"unknown dataset 'nope' \(known: covid-ct, medseg, synthetic\)"):
        load_manifest("nope", tmp_path)
