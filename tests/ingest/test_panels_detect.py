import numpy as np
import pytest

from covidct_bench.data import figures as F
from covidct_bench.ingest.detect import ct_score, features
from covidct_bench.ingest.panels import chest_crop, split_panels
from tests.conftest import SHARED_DATA


@pytest.mark.parametrize("background", [255, 0])
@pytest.mark.parametrize("count,cols", [(4, 2), (6, 3), (3, 3)])
def test_xy_cut_finds_every_panel_in_reading_order(background, count, cols):
    rng = np.random.default_rng(count + background)
    comp = F.composite([F.ct_slice(rng, True, 128, 96) for _ in range(count)], cols, rng, background=background)
    boxes = split_panels(comp.image.mean(axis=2).astype(np.uint8))
    assert len(boxes) == count
    for (x0, y0, x1, y1), (tx0, ty0, tx1, ty1) in zip(boxes, comp.boxes):  # same order, each inside its panel
        assert tx0 <= (x0 + x1) / 2 < tx1 and ty0 <= (y0 + y1) / 2 < ty1


def test_a_single_image_is_one_panel():
    rng = np.random.default_rng(1)
    img = F.with_margin(F.ct_slice(rng, False, 160, 96), rng).image
    assert len(split_panels(img.mean(axis=2).astype(np.uint8))) == 1


def test_chest_crop_removes_margins_and_letters():
    rng = np.random.default_rng(2)
    ct = F.ct_slice(rng, True, 160, 96, window="mediastinal")
    canvas = np.zeros((260, 300), np.uint8)
    canvas[50:210, 70:230] = ct[..., 0]
    canvas[5:25, 5:20] = 255  # a panel letter in the corner
    x0, y0, x1, y1 = chest_crop(canvas, margin=0.0)
    assert 60 <= x0 and x1 <= 240 and 40 <= y0 and y1 <= 220  # inside the slice, letter excluded
    assert (x1 - x0) > 100 and (y1 - y0) > 60


def test_ct_scores_high_for_ct_and_low_for_other_figures():
    rng = np.random.default_rng(5)
    cts = [ct_score(F.ct_slice(rng, bool(k % 2), 192, 96)) for k in range(6)]
    others = {kind: ct_score(F.NON_CT[kind](rng, 192)) for kind in ("plot", "diagram", "microscopy", "photo", "brain_ct")}
    assert min(cts) > 0.7
    assert max(others.values()) < 0.5, others
    assert set(features(np.zeros((50, 60, 3), np.uint8))) >= {"colour", "lungs", "edges"}


@pytest.mark.real_data
def test_recall_on_real_covid_ct_images():
    import io
    import zipfile

    from PIL import Image

    zpath = SHARED_DATA / "covid-ct" / "Images-processed" / "CT_NonCOVID.zip"
    if not zpath.is_file():
        pytest.skip("../shared/data/covid-ct not present")
    with zipfile.ZipFile(zpath) as zf:
        names = [n for n in zf.namelist() if n.lower().endswith((".png", ".jpg", ".jpeg"))][::8]
        scores = []
        for n in names:
            img = np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB"))
            x0, y0, x1, y1 = chest_crop(img.mean(axis=2).astype(np.uint8))
            scores.append(ct_score(img[y0:y1, x0:x1]))
    assert np.mean(np.array(scores) >= 0.5) >= 0.8  # every one of them is a chest CT; measured 0.86
