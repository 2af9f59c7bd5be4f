import os
import zipfile
from pathlib import Path

import pytest

from covidct_bench.data import get_dataset, load_manifest
from covidct_bench.data.covid_ct import parse_age, parse_captions
from covidct_bench.errors import BenchError
from tests.conftest import make_covid_ct_source, phantom_bytes


def test_fetch_from_folder_builds_manifest_with_official_split(covid_ct_source, tmp_path):
    res = get_dataset("covid-ct").fetch(root=tmp_path, source=str(covid_ct_source))
    assert not res.reused and res.images == 24
    df = load_manifest("covid-ct", tmp_path)
    counts = df.groupby(["split", "label"]).size().to_dict()
    assert counts == {(s, lab): 4 for s in ("train", "val", "test") for lab in (0, 1)}
    covid = df[df.label == 1]
    assert covid.image_id.str.startswith("CT_COVID/").all()  # COVID is the positive class (1)
    assert set(covid.patient_id) == {f"Patient {i}" for i in range(1, 7)}
    assert set(df[df.label == 0].patient_id) == {f"crawled_patient_{i}" for i in range(1, 7)}
    # patient-level split: no patient in two splits
    assert (df.groupby("patient_id").split.nunique() == 1).all()
    # every path resolves; '%' kept in file names
    assert all((tmp_path / "covid-ct" / p).is_file() for p in df.path)
    assert df.path.str.contains("%").all()
    # JPEG bytes behind a .png name are recorded, not rejected
    assert ((covid.format == "JPEG") & covid.path.str.endswith(".png")).any()
    assert covid.caption.str.startswith("Figure").all()
    assert set(covid.sex.dropna()) == {"M", "F"}
    assert set(covid.age.dropna()) == {41.0, 40.0}


def test_file_url_source_takes_the_same_path(covid_ct_source, tmp_path):
    res = get_dataset("covid-ct").fetch(root=tmp_path, source=covid_ct_source.resolve().as_uri())
    df_url = load_manifest("covid-ct", tmp_path)
    assert res.images == 24
    assert sorted(df_url.sha256) == sorted(load_manifest(str(res.path)).sha256)


def test_http_source(covid_ct_source, tmp_path):
    """The upstream default is an https URL; the same code serves http from a loopback server."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(covid_ct_source))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        res = get_dataset("covid-ct").fetch(root=tmp_path, source=url)
    finally:
        server.shutdown()
    assert res.images == 24


def test_second_fetch_is_a_verified_noop_and_repairs_corruption(covid_ct_source, tmp_path):
    ds = get_dataset("covid-ct")
    first = ds.fetch(root=tmp_path, source=str(covid_ct_source))
    manifest = first.path / "manifest.parquet"
    mtime = manifest.stat().st_mtime_ns
    again = ds.fetch(root=tmp_path, source=str(covid_ct_source))
    assert again.reused and manifest.stat().st_mtime_ns == mtime
    # a corrupted image fails verification, so the next fetch rebuilds instead of trusting it
    victim = next((first.path / "images" / "CT_NonCOVID").iterdir())
    victim.write_bytes(b"garbage")
    repaired = ds.fetch(root=tmp_path, source=str(covid_ct_source))
    assert not repaired.reused and victim.read_bytes() != b"garbage"


def _leaves_nothing(root: Path):
    assert not root.exists() or list(root.iterdir()) == []


def test_source_without_layout_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match=r"has no Images-processed/CT_COVID.zip"):
        get_dataset("covid-ct").fetch(root=tmp_path / "root", source=str(tmp_path / "empty"))
    _leaves_nothing(tmp_path / "root")
    with pytest.raises(BenchError, match="no such directory"):
        get_dataset("covid-ct").fetch(root=tmp_path / "root", source=str(tmp_path / "missing"))


def test_split_list_naming_missing_file(tmp_path):
    src = make_covid_ct_source(tmp_path / "src", list_extra={"val": ["ghost.png"]})
    with pytest.raises(BenchError, match=r"Data-split/COVID/valCT_COVID.txt line 5: 'ghost.png' is not in CT_COVID.zip"):
        get_dataset("covid-ct").fetch(root=tmp_path / "root", source=str(src))
    _leaves_nothing(tmp_path / "root")


def test_truncated_image_names_the_entry(tmp_path):
    good = phantom_bytes(1, True)
    src = make_covid_ct_source(tmp_path / "src", zip_extra={"COVID": [("CT_COVID/cut.png", good[: len(good) // 2])]},
                               list_extra={"train": ["cut.png"]})
    with pytest.raises(BenchError, match=r"CT_COVID/cut.png: not a readable image"):
        get_dataset("covid-ct").fetch(root=tmp_path / "root", source=str(src))
    _leaves_nothing(tmp_path / "root")


@pytest.mark.parametrize("entry", ["../evil.png", "/abs/evil.png", "CT_COVID/../../evil.png"])
def test_zip_slip_is_refused_before_writing(tmp_path, entry):
    src = make_covid_ct_source(tmp_path / "src", zip_extra={"COVID": [(entry, b"x")]})
    with pytest.raises(BenchError, match=r"CT_COVID.zip: entry .* outside the extraction folder"):
        get_dataset("covid-ct").fetch(root=tmp_path / "root", source=str(src))
    _leaves_nothing(tmp_path / "root")
    assert not (tmp_path / "evil.png").exists() and not Path("/abs/evil.png").exists()


def test_failed_refetch_keeps_the_previous_copy(covid_ct_source, tmp_path):
    ds = get_dataset("covid-ct")
    ds.fetch(root=tmp_path, source=str(covid_ct_source))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError):
        ds.fetch(root=tmp_path, source=str(tmp_path / "empty"), force=True)
    assert len(load_manifest("covid-ct", tmp_path)) == 24
    assert sorted(os.listdir(tmp_path)) == ["covid-ct", "empty"]  # no staging folder left behind


def test_caption_and_age_parsing():
    assert parse_captions("['Figure 1. A.', ' (B) GGO. ']") == "Figure 1. A. (B) GGO."
    assert parse_captions("['unterminated") == "unterminated"
    assert parse_captions(None) is None
    assert parse_age("40+") == 40.0 and parse_age(" 67 ") == 67.0 and parse_age("Young Child") is None


def test_bad_zip_file(tmp_path):
    src = make_covid_ct_source(tmp_path / "src")
    (src / "Images-processed" / "CT_NonCOVID.zip").write_bytes(b"not a zip")
    with pytest.raises(BenchError, match=r"CT_NonCOVID.zip: not a valid zip file"):
        get_dataset("covid-ct").fetch(root=tmp_path / "root", source=str(src))
    assert zipfile.is_zipfile(src / "Images-processed" / "CT_COVID.zip")
    _leaves_nothing(tmp_path / "root")
