import numpy as np
import torch
from scipy import ndimage as ndi

from covidct_bench.data import load_manifest
from covidct_bench.data.torch_dataset import ManifestDataset
from covidct_bench.data.transforms import TransformConfig, eval_transforms, presets, train_transforms


def test_paper_defaults():
    cfg = TransformConfig()
    assert (cfg.size, cfg.crop_scale, cfg.hflip, cfg.brightness, cfg.contrast) == (480, 0.5, 0.5, 0.2, 0.2)
    crop = train_transforms(cfg).transforms[0]
    assert crop.scale == (0.5, 1.0) and list(crop.size) == [480, 480]


def test_image_and_masks_transform_jointly(synthetic_root):
    df = load_manifest("synthetic", synthetic_root)
    ds = ManifestDataset(df, "train", transform=train_transforms(TransformConfig(size=48, normalize=False)))
    torch.manual_seed(0)
    for i in range(6):
        s = ds[i]
        assert s["image"].shape == (3, 48, 48) and s["image"].dtype == torch.float32
        assert s["lung_mask"].shape == (1, 48, 48) and set(s["lung_mask"].unique().tolist()) <= {0, 1}
        # after the same crop/flip the mask still covers the dark lungs, not the tissue around them
        lung = s["lung_mask"][0].numpy().astype(bool)
        ring = ndi.binary_dilation(lung, iterations=3) & ~lung
        if lung.sum() > 20 and ring.sum() > 20:
            img = s["image"][0].numpy()
            assert img[lung].mean() + 0.1 < img[ring].mean()


def test_flip_moves_mask_with_image():
    from torchvision import tv_tensors
    from torchvision.transforms import v2
    img = torch.zeros(1, 8, 8, dtype=torch.uint8)
    img[0, :, :2] = 255
    sample = {"image": tv_tensors.Image(img), "m": tv_tensors.Mask((img > 0).to(torch.uint8))}
    out = v2.RandomHorizontalFlip(1.0)(sample)
    assert (out["m"][0, :, -2:] == 1).all() and (out["image"][0, :, -2:] == 255).all()


def test_eval_is_deterministic_and_presets_per_split(synthetic_root):
    df = load_manifest("synthetic", synthetic_root)
    ds = ManifestDataset(df, "test", transform=eval_transforms(TransformConfig(size=32)))
    assert torch.equal(ds[0]["image"], ds[0]["image"])
    p = presets(TransformConfig(size=32))
    assert p["val"] is p["test"] and p["train"] is not p["val"]
    assert not np.allclose(ds[0]["image"].mean().item(), 0.5)  # normalised
