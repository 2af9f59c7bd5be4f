import numpy as np
import pytest
from PIL import Image

from covidct_bench.data import get_dataset, load_manifest
from covidct_bench.errors import BenchError
from tests.conftest import make_medseg_source


def test_fetch_medseg(tmp_path):
    src = make_medseg_source(tmp_path / "src")
    res = get_dataset("medseg").fetch(root=tmp_path / "root", source=str(src))
    df = load_manifest("medseg", tmp_path / "root")
    assert res.images == 4 and (df.label == 1).all() and (df.split == "train").all()
    assert list(df.image_id) == ["medseg/0", "medseg/3", "medseg/6", "medseg/9"]
    multi = np.asarray(Image.open(res.path / df.lesion_multiclass_path[0]))
    assert set(np.unique(multi)) == {0, 1, 2}
    assert get_dataset("medseg").fetch(root=tmp_path / "root", source=str(src)).reused


def test_medseg_bad_inputs(tmp_path):
    with pytest.raises(BenchError, match="no public direct-download URL; pass --source"):
        get_dataset("medseg").fetch(root=tmp_path / "root")
    src = make_medseg_source(tmp_path / "src", n=2)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(src / "train/lesion/3.png")
    with pytest.raises(BenchError, match=r"train/lesion/3.png: mask is 10x10"):
        get_dataset("medseg").fetch(root=tmp_path / "root", source=str(src))
    (src / "train/lesion/3.png").unlink()
    with pytest.raises(BenchError, match="has no train/lesion/3.png"):
        get_dataset("medseg").fetch(root=tmp_path / "root", source=str(src))
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())
