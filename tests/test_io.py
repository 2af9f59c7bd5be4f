import pytest

from covidct_bench.io import atomic_path, staging_dir


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(f) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert f.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with atomic_path(f) as tmp:
        tmp.write_text("new")
    assert f.read_text() == "new"


def test_staging_dir_swaps_whole_folder(tmp_path):
    dest = tmp_path / "d"
    with staging_dir(dest) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(KeyError):
        with staging_dir(dest) as tmp:
            (tmp / "y").write_text("2")
            raise KeyError
    assert [p.name for p in dest.iterdir()] == ["x"] and [p.name for p in tmp_path.iterdir()] == ["d"]
