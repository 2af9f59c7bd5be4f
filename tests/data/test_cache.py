import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from covidct_bench.data import load_manifest
from covidct_bench.data.cache import Cache, CachedDataset, build_cache, resize_square
from covidct_bench.data.torch_dataset import ManifestDataset
from covidct_bench.errors import BenchError


@pytest.fixture(scope="module")
def cache(synthetic_root, ray_local):
    return build_cache(load_manifest("synthetic", synthetic_root), size=32)


def test_cache_matches_decoding(cache, synthetic_root):
    df = load_manifest("synthetic", synthetic_root)
    raw, cached = ManifestDataset(df), CachedDataset(cache)
    assert len(cached) == len(raw) == 24
    for i in (0, 7, 23):
        a, b = raw[i], cached[i]
        assert b["image_id"] == a["image_id"] and b["label"] == a["label"]
        expected = resize_square(a["image"][0].numpy(), 32)
        assert np.array_equal(b["image"][0].numpy(), expected)
        assert b["lung_mask"].shape == (1, 32, 32) and b["has_lesion_mask"]
        assert b["lung_mask"].sum() > 0


def test_cache_is_reused_and_split_selects(cache, synthetic_root):
    stamp = (cache.path / "images.npy").stat().st_mtime_ns
    again = build_cache(load_manifest("synthetic", synthetic_root), size=32)
    assert (again.path / "images.npy").stat().st_mtime_ns == stamp
    test = CachedDataset(cache.path, split="test")
    assert len(test) == 4 and set(cache.index.split.iloc[test.rows]) == {"test"}


def test_dataloader_with_worker_processes(cache):
    from covidct_bench.data.transforms import TransformConfig, train_transforms

    ds = CachedDataset(cache, split="train", transform=train_transforms(TransformConfig(size=24)))
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=1)))
    assert batch["image"].shape == (4, 3, 24, 24) and batch["lung_mask"].shape == (4, 1, 24, 24)
    assert batch["label"].dtype == torch.int64


def test_ray_data_iterator(cache):
    ds = cache.to_ray_dataset(split="train")
    batches = list(ds.iter_torch_batches(batch_size=8))
    assert sum(len(b["label"]) for b in batches) == 16
    assert batches[0]["image"].shape[1:] == (1, 32, 32) and batches[0]["image"].dtype == torch.uint8


def test_bad_image_fails_with_its_name_and_leaves_no_cache(synthetic_root, tmp_path, ray_local):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root / "synthetic", root)
    df = load_manifest(str(root))
    (root / df.path[3]).write_bytes(b"\x89PNG broken")
    with pytest.raises(BenchError, match=rf"{df.path[3]}: not a readable image"):
        build_cache(df, size=16, out=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    with pytest.raises(BenchError, match="not a complete cache"):
        Cache(tmp_path / "cache")


def test_cache_as_a_ray_dataset_gives_torch_batches_of_one_split(cache):
    """The Ray Data view of the cache (what a TorchTrainer's ``datasets=`` / ``get_dataset_shard`` hands a
    worker): one split's rows only, as torch batches of the cached size. The training loop itself reads
    the cache's arrays directly; every train and grid test covers that path."""
    n, pos = 0, 0
    for batch in cache.to_ray_dataset("train").iter_torch_batches(batch_size=4):
        assert batch["image"].shape[1:] == (1, 32, 32)
        n += len(batch["label"])
        pos += int(batch["label"].sum())
    assert (n, pos) == (16, 8)


def test_no_mask_arrays_for_a_manifest_without_masks(synthetic_root, tmp_path, ray_local):
    df = load_manifest("synthetic", synthetic_root)
    df["lung_mask_path"] = None
    df["lesion_mask_path"] = None
    cache = build_cache(df, size=16, out=tmp_path / "nomask")
    assert sorted(p.name for p in cache.path.glob("*.npy")) == ["images.npy"]
    s = CachedDataset(cache)[0]
    assert not s["has_lung_mask"] and not s["has_lesion_mask"] and s["lung_mask"].sum() == 0
    assert next(iter(cache.to_ray_dataset().iter_torch_batches(batch_size=4)))["lesion_mask"].shape == (4, 1, 16, 16)
