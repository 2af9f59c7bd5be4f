"""Backbone registry, input-channel surgery and every weight-loading path, on files the tests write."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision

from covidct_bench.errors import BenchError
from covidct_bench.models.backbones import (BACKBONES, adapt_input_channels, check_input_size, create_backbone,
                                            load_state_file, register_backbone)


def test_paper_backbones_are_registered_and_any_torchvision_name_works():
    for name in ("densenet169", "resnet50", "resnet18"):
        assert name in BACKBONES
    m = create_backbone("shufflenet_v2_x0_5", in_chans=3, num_outputs=1)  # not registered, still accepted
    assert m(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_adding_a_backbone_is_one_line():
    register_backbone("resnet152", min_size=64)
    try:
        with pytest.raises(BenchError, match="too small for resnet152"):
            check_input_size("resnet152", 48)
    finally:
        BACKBONES._items.pop("resnet152")


def test_unknown_backbone_and_too_small_input_are_one_line_errors():
    with pytest.raises(BenchError, match="--backbone: unknown backbone 'resnet7'"):
        create_backbone("resnet7")
    with pytest.raises(BenchError, match="--image-size 16 is too small for resnet18"):
        check_input_size("resnet18", 16)
    with pytest.raises(BenchError, match="--image-size 64 does not fit vit_b_16"):
        check_input_size("vit_b_16", 64)


def test_mask_channel_starts_at_zero_so_pretrained_output_is_unchanged():
    torch.manual_seed(0)
    rgb = torchvision.models.resnet18(num_classes=1).eval()
    four = torchvision.models.resnet18(num_classes=1).eval()
    four.load_state_dict(rgb.state_dict())
    adapt_input_channels(four, 4)
    assert four.conv1.weight.shape[1] == 4
    x = torch.randn(2, 3, 64, 64)
    mask = (torch.rand(2, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        torch.testing.assert_close(four(torch.cat([x, mask], 1)), rgb(x))
    assert four.conv1.weight[:, 3].abs().sum() == 0  # learns from the first step (input is not zero)


def _imagenet_file(path: Path, name: str = "resnet18") -> dict:
    torch.manual_seed(1)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    torch.save(state, path)
    return state


def test_imagenet_weights_from_a_file_are_loaded(tmp_path):
    state = _imagenet_file(tmp_path / "r18.pth")
    m = create_backbone("resnet18", "imagenet", tmp_path / "r18.pth", in_chans=4, num_outputs=1)
    torch.testing.assert_close(m.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    torch.testing.assert_close(m.conv1.weight[:, :3], state["conv1.weight"])
    assert m.fc.out_features == 1


def test_imagenet_weights_from_a_populated_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    ckpt = tmp_path / "hub" / "checkpoints" / os.path.basename(urlparse(url).path)
    ckpt.parent.mkdir(parents=True)
    state = _imagenet_file(ckpt)
    m = create_backbone("resnet18", "imagenet")
    torch.testing.assert_close(m.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_imagenet_without_cache_or_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # no download, even where the network is open
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(BenchError, match=r"--init imagenet: resnet18 weights are not in the torch hub cache .*--weights FILE"):
        create_backbone("resnet18", "imagenet")


class Foreign:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_foreign_pickles_and_corrupt_files_are_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Foreign()))
    with pytest.raises(BenchError, match="evil.pth"):
        load_state_file(evil)
    torch.save({"model": Foreign()}, tmp_path / "evil2.pth")
    with pytest.raises(BenchError, match="pickled Python objects"):
        load_state_file(tmp_path / "evil2.pth")
    good = tmp_path / "w.pth"
    _imagenet_file(good)
    (tmp_path / "trunc.pth").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(BenchError, match="--weights: cannot load .*trunc.pth"):
        create_backbone("resnet18", "imagenet", tmp_path / "trunc.pth")
    with pytest.raises(BenchError, match="does not fit the model"):
        create_backbone("resnet50", "imagenet", good)


def test_safetensors_weights(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()
    st.save_file(state, str(tmp_path / "w.safetensors"))
    m = create_backbone("resnet18", "imagenet", tmp_path / "w.safetensors")
    torch.testing.assert_close(m.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])


def test_densenet_legacy_keys_from_the_published_files_load(tmp_path):
    torch.manual_seed(3)
    state = torchvision.models.densenet121().state_dict()
    legacy = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2.") if "denselayer" in k else k: v
              for k, v in state.items()}
    assert legacy != state
    torch.save(legacy, tmp_path / "d121.pth")
    m = create_backbone("densenet121", "imagenet", tmp_path / "d121.pth")
    torch.testing.assert_close(m.features.denseblock1.denselayer1.norm1.weight, state["features.denseblock1.denselayer1.norm1.weight"])
