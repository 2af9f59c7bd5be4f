"""Multi-task net, residual U-Net and MoCo v2: shapes and the behaviour the paper relies on."""

from __future__ import annotations

import pytest
import torch

from covidct_bench.errors import BenchError
from covidct_bench.models.backbones import create_backbone
from covidct_bench.models.moco import MoCo
from covidct_bench.models.multitask import MultiTaskNet
from covidct_bench.models.unet import ResUNet


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121", "mobilenet_v3_small"])
def test_multitask_shapes_and_the_lesion_mask_feeds_the_classifier(backbone):
    torch.manual_seed(0)
    m = MultiTaskNet(backbone, in_chans=4, aspp_rates=(2, 4)).eval()
    x = torch.randn(2, 4, 64, 64)
    out = m(x)
    assert out["logit"].shape == (2,) and out["lesion_logits"].shape == (2, 1, 64, 64)
    with torch.no_grad():
        m.lesion_head.bias += 3.0  # a different predicted lesion mask ...
    assert not torch.allclose(m(x)["logit"], out["logit"])  # ... changes the classification


def test_multitask_needs_a_convolutional_trunk():
    with pytest.raises(BenchError, match="multi-task head needs a convolutional trunk"):
        MultiTaskNet("vit_b_16")


def test_residual_unet_keeps_the_resolution_and_has_residual_units():
    u = ResUNet(in_chans=1, base=4)
    assert u(torch.randn(2, 1, 40, 40)).shape == (2, 1, 40, 40)
    assert sum(1 for m in u.modules() if type(m).__name__ == "ResidualUnit") == 7


def test_moco_momentum_encoder_and_queue():
    torch.manual_seed(0)
    m = MoCo("resnet18", queue=10, hidden=32, dim=8, momentum=0.5)
    for p in m.encoder_k.parameters():
        assert not p.requires_grad
    before_k = m.encoder_k.conv1.weight.clone()
    with torch.no_grad():
        m.encoder_q.conv1.weight.add_(1.0)
    logits, target = m(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 11) and (target == 0).all()
    torch.testing.assert_close(m.encoder_k.conv1.weight, 0.5 * before_k + 0.5 * m.encoder_q.conv1.weight)
    assert int(m.queue_ptr) == 4
    m(torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32))
    assert int(m.queue_ptr) == 2  # wraps around the queue of 10
    torch.testing.assert_close(m.queue.norm(dim=0), torch.ones(10))


def test_cssl_backbone_loads_into_a_classifier_with_a_mask_channel(tmp_path):
    torch.manual_seed(0)
    m = MoCo("resnet18", queue=8, hidden=16, dim=8)
    torch.save(m.backbone_checkpoint(), tmp_path / "backbone.pt")
    clf = create_backbone("resnet18", f"cssl:{tmp_path}", in_chans=4)
    torch.testing.assert_close(clf.layer3[0].conv1.weight, m.encoder_q.layer3[0].conv1.weight)
    torch.testing.assert_close(clf.conv1.weight[:, :3], m.encoder_q.conv1.weight)
    with pytest.raises(BenchError, match="trained 'resnet18', not 'resnet34'"):
        create_backbone("resnet34", f"cssl:{tmp_path}")
    with pytest.raises(BenchError, match="--init cssl: .*nothing.pt does not exist"):
        create_backbone("resnet18", f"cssl:{tmp_path / 'nothing.pt'}")
