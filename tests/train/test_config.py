"""TrainConfig: paper defaults per task, overrides, one-line errors naming the key or file."""

from __future__ import annotations

import pytest

from covidct_bench.errors import BenchError
from covidct_bench.train.config import TrainConfig, load_config


def test_paper_defaults_per_task():
    c = TrainConfig().resolved()
    assert (c.image_size, c.batch_size, c.lr, c.optimizer, c.cosine_period) == (480, 16, 1e-4, "adam", 10)
    assert (c.augment.crop_scale, c.augment.brightness, c.augment.contrast, c.augment.hflip) == (0.5, 0.2, 0.2, 0.5)
    assert (c.cls_weight, c.seg_weight) == (1.0, 1.0)
    m = TrainConfig(task="cssl").resolved()
    assert (m.batch_size, m.lr, m.optimizer, m.momentum, m.weight_decay, m.moco.queue) == (128, 0.015, "sgd", 0.9, 1e-4, 512)
    assert m.moco.augment.crop_scale == 0.2 and m.moco.augment.jitter == (0.4, 0.4, 0.4, 0.1)
    assert TrainConfig(task="classify", lr=3e-4).resolved().lr == 3e-4  # an explicit value wins


def test_in_chans_follow_the_mask_mode():
    assert TrainConfig(mask_mode="channel").in_chans == 4
    assert TrainConfig(mask_mode="multiply").in_chans == 3
    assert TrainConfig(task="segment").in_chans == 1


def test_config_file_plus_flags(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("backbone: resnet50\nepochs: 3\nmoco:\n  queue: 64\n")
    c = load_config(f, {"epochs": 5, "lr": None})
    assert (c.backbone, c.epochs, c.moco.queue) == ("resnet50", 5, 64)


@pytest.mark.parametrize("text, message", [
    ("epochs: 0\n", r"run.yaml: epochs: Input should be greater than or equal to 1"),
    ("bakbone: resnet50\n", r"run.yaml: bakbone: Extra inputs are not permitted"),
    ("mask_mode: lungs\n", r"run.yaml: mask_mode: Input should be 'none', 'channel', 'multiply' or 'exclude'"),
    ("threshold_rule: best\n", r"run.yaml: .*threshold_rule must be one of youden, f1, fixed"),
    ("- a\n- b\n", r"run.yaml: a config file holds a mapping"),
    ("key: [unclosed\n", r"run.yaml: cannot read config"),
])
def test_bad_config_files_name_file_and_key(tmp_path, text, message):
    f = tmp_path / "run.yaml"
    f.write_text(text)
    with pytest.raises(BenchError, match=message):
        load_config(f, {})


def test_unet_size_must_be_a_multiple_of_8():
    with pytest.raises(BenchError, match="--image-size 100: the residual U-Net needs a multiple of 8"):
        TrainConfig(task="segment", image_size=100).resolved()


def test_absolute_paths_resolve_the_default_root_for_ray_actors(tmp_path, monkeypatch):
    # a grid trial runs in a Ray actor with another working directory: relative and default paths must not reach it
    from covidct_bench.train.runner import absolute_paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COVIDCT_BENCH_ROOT", raising=False)
    cfg = absolute_paths(TrainConfig(dataset="synthetic", init="cssl:runs/pre"))
    assert cfg.root == str(tmp_path / "datasets") and cfg.init == f"cssl:{tmp_path / 'runs' / 'pre'}"
    monkeypatch.setenv("COVIDCT_BENCH_ROOT", "elsewhere")
    assert absolute_paths(TrainConfig(dataset="synthetic")).root == str(tmp_path / "elsewhere")
