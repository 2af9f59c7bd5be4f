import numpy as np
from scipy import ndimage as ndi

from covidct_bench.data.phantoms import paper_style, render_slice, sample_lesions, sample_patient, to_uint8


def _patient(seed):
    anat, les, noise = (np.random.default_rng(s) for s in np.random.SeedSequence([seed]).spawn(3))
    p = sample_patient(anat)
    p.lesions = sample_lesions(les)
    return p, noise


def test_label_changes_only_the_lesions():
    """Rendering the same patient without its lesions (the negative) differs only around the lesions."""
    for seed in range(4):
        p, _ = _patient(seed)
        with_l, lung, lesion = render_slice(p, 0.5, 96, np.random.default_rng(seed))
        without, lung2, none = render_slice(p, 0.5, 96, np.random.default_rng(seed), with_lesions=False)
        assert (lung == lung2).all() and none.max() == 0
        near_lesion = ndi.binary_dilation(lesion > 0, iterations=6)
        assert np.abs(with_l - without)[~near_lesion].max() == 0.0
        if lesion.any():
            assert (with_l - without)[lesion > 0].mean() > 0.05  # lesions are denser than lung


def test_slice_has_ct_anatomy():
    p, noise = _patient(7)
    img, lung, lesion = render_slice(p, 0.5, 128, noise)
    assert 0.12 < lung.mean() < 0.5  # two lungs take a good part of the slice
    assert img[lung & (lesion == 0)].mean() < 0.25 < img[~lung & (img > 0.2)].mean()  # dark lungs in soft tissue
    assert img[:4, :4].mean() < 0.1  # air around the body
    assert (img > 0.85).sum() > 20  # bone (spine, ribs)
    left, right = lung[:, :64].sum(), lung[:, 64:].sum()
    assert min(left, right) > 0.5 * max(left, right)  # two lungs, one each side


def test_paper_style_keeps_masks_aligned():
    p, noise = _patient(3)
    img, lung, lesion = render_slice(p, 0.5, 96, noise)
    pil, (lung_p, lesion_p), quality = paper_style(to_uint8(img), [lung, lesion], np.random.default_rng(0), lung)
    assert pil.size == lung_p.shape[::-1] == lesion_p.shape[::-1]
    assert lung_p.sum() == lung.sum() and 40 <= quality <= 90
