"""Classical lung masks against the phantoms' true masks, and mask sets."""

from __future__ import annotations

import numpy as np
import pytest

from covidct_bench.data import load_manifest
from covidct_bench.data.images import load_mask
from covidct_bench.data.lung_masks import classical_lung_mask, classical_masks, with_lung_masks, write_mask_set
from covidct_bench.data.phantoms import render_slice, sample_lesions, sample_patient, to_uint8
from covidct_bench.errors import BenchError
from covidct_bench.metrics import dice_iou


@pytest.mark.parametrize("size", [128, 256])
def test_classical_masks_agree_with_the_phantoms_true_lungs(size):
    dice = []
    for seed in range(6):
        anat, les, noise = (np.random.default_rng(s) for s in np.random.SeedSequence([11, seed]).spawn(3))
        p = sample_patient(anat)
        if seed % 2:
            p.lesions = sample_lesions(les)
        img, lung, _ = render_slice(p, 0.5, size, noise)
        dice.append(dice_iou(classical_lung_mask(to_uint8(img))[None], lung[None])[0][0])
    assert np.mean(dice) > 0.9 and min(dice) > 0.75


def test_blank_image_gives_an_empty_mask():
    assert not classical_lung_mask(np.full((64, 64), 128, np.uint8)).any()


def test_mask_sets_round_trip_into_the_manifest(synthetic_root):
    df = load_manifest("synthetic", synthetic_root)
    out = write_mask_set(df, "classical-t", classical_masks(df), {"method": "classical"})
    assert (out / "index.parquet").is_file() and len(list(out.glob("*.png"))) == len(df)
    dm = with_lung_masks(df, "classical-t")
    assert dm["lung_mask_path"].str.startswith("masks/classical-t/").all()
    assert (df["lung_mask_path"] != dm["lung_mask_path"]).all()  # the manifest itself is untouched
    m = load_mask(synthetic_root / "synthetic" / dm["lung_mask_path"].iloc[0], "m") > 0
    assert m.shape == (df["height"].iloc[0], df["width"].iloc[0]) and m.any()
    assert with_lung_masks(df, "manifest") is df


def test_missing_or_incomplete_mask_sets_are_named(synthetic_root):
    df = load_manifest("synthetic", synthetic_root)
    with pytest.raises(BenchError, match="no mask set 'nope'"):
        with_lung_masks(df, "nope")
    write_mask_set(df.iloc[:3], "partial-t", classical_masks(df.iloc[:3]), {})
    with pytest.raises(BenchError, match="mask set 'partial-t' has no mask for image_id"):
        with_lung_masks(df, "partial-t")
    with pytest.raises(BenchError, match="not a valid mask-set name"):
        write_mask_set(df, "../x", [], {})
