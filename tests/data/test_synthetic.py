import numpy as np
import pytest
from PIL import Image

from covidct_bench.data import get_dataset, load_manifest
from covidct_bench.data.audit import audit_manifest
from covidct_bench.data.synthetic import SynthConfig, make_patient_slices, plan_patients


def test_manifest_split_by_patient_and_balanced(synthetic_root):
    df = load_manifest("synthetic", synthetic_root)
    assert len(df) == 24 and set(df.split) == {"train", "val", "test"}
    assert (df.groupby("patient_id").split.nunique() == 1).all()
    assert (df.groupby("patient_id").size() == 2).all()  # several slices per patient
    for split, g in df.groupby("split"):
        assert g.label.sum() == (g.label == 0).sum(), split  # balanced per split
    root = synthetic_root / "synthetic"
    for row in df.itertuples():
        lesion = np.asarray(Image.open(root / row.lesion_mask_path))
        lung = np.asarray(Image.open(root / row.lung_mask_path))
        assert lung.shape == (row.height, row.width) and lung.max() == 255
        if row.label == 0:
            assert lesion.max() == 0
        assert not (lesion & ~lung).any()  # lesions lie inside the lungs
    pos = df[df.label == 1]
    frac = [np.asarray(Image.open(root / p)).any() for p in pos.lesion_mask_path]
    assert np.mean(frac) >= 0.5  # most positive slices show a lesion


def test_deterministic_for_a_seed(tmp_path, synthetic_root):
    again = get_dataset("synthetic").fetch(out=tmp_path / "a", n=24, size=64, slices_per_patient=2, seed=3)
    assert list(load_manifest(str(again.path)).sha256) == list(load_manifest("synthetic", synthetic_root).sha256)
    other = get_dataset("synthetic").fetch(out=tmp_path / "b", n=24, size=64, slices_per_patient=2, seed=4)
    assert set(load_manifest(str(other.path)).sha256).isdisjoint(load_manifest(str(again.path)).sha256)


def test_same_options_reuse_and_new_options_rebuild(synthetic_root):
    ds = get_dataset("synthetic")
    assert ds.fetch(root=synthetic_root, n=24, size=64, slices_per_patient=2, seed=3).reused
    # different options must not be answered from the old folder
    res = ds.fetch(out=synthetic_root / "other", n=12, size=64, slices_per_patient=2, seed=3)
    assert not res.reused and res.images == 12


@pytest.mark.parametrize("style", ["clean", "paper"])
def test_positives_and_negatives_share_style(tmp_path, style):
    """The same synthetic patient rendered as negative and positive: same file type, size, margins, and
    (clean) identical pixels away from the lesions."""
    cfg = SynthConfig(n=6, size=64, style=style, seed=5)
    for folder in ("neg", "pos"):
        for sub in ("images", "lung_masks", "lesion_masks", "lesion_multiclass"):
            (tmp_path / folder / sub).mkdir(parents=True)
    neg = make_patient_slices(cfg, 0, 0, 2, tmp_path / "neg")
    pos = make_patient_slices(cfg, 0, 1, 2, tmp_path / "pos")
    for a, b in zip(neg, pos):
        ia, ib = Image.open(tmp_path / "neg" / a["path"]), Image.open(tmp_path / "pos" / b["path"])
        assert ia.size == ib.size and ia.format == ib.format and a["path"] == b["path"]
        lung_a = np.asarray(Image.open(tmp_path / "neg" / a["lung_mask_path"]))
        assert (lung_a == np.asarray(Image.open(tmp_path / "pos" / b["lung_mask_path"]))).all()
        lesion = np.asarray(Image.open(tmp_path / "pos" / b["lesion_mask_path"])) > 0
        if style == "clean":
            from scipy import ndimage as ndi
            far = ~ndi.binary_dilation(lesion, iterations=6)
            assert (np.asarray(ia)[far] == np.asarray(ib)[far]).all()


def test_no_near_duplicates_across_patients(tmp_path):
    res = get_dataset("synthetic").fetch(out=tmp_path / "s", n=48, size=64, slices_per_patient=2, seed=1)
    a = audit_manifest(load_manifest(str(res.path)))
    assert a["patient_leakage"] == 0 and a["near_duplicates_across_splits"] == 0
    assert a["exact_duplicates_within_splits"] == 0


def test_plan_has_both_classes_in_every_split():
    plan = plan_patients(SynthConfig(n=12, slices_per_patient=2))
    assert plan.slices.sum() == 12
    assert plan.groupby("split").label.nunique().to_dict() == {"test": 2, "train": 2, "val": 2}


def test_config_is_validated():
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="style"):
        SynthConfig(style="fancy")
    with pytest.raises(ValidationError, match="extra"):
        SynthConfig(nn=3)
