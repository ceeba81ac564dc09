"""ViT, DINO head/loss, EMA and schedules."""

from __future__ import annotations

import pytest
import torch

from msc_france.xstars.dino import DINOHead, DINOLoss, ema_update
from msc_france.xstars.schedules import cosine, linear_warmup
from msc_france.xstars.vit import ViT


@pytest.mark.parametrize("arch,dim", [("vit_test", 64), ("vit_tiny", 192)])
def test_vit_tokens(arch: str, dim: int) -> None:
    vit = ViT({"s2": 4, "aerial": 3}, arch, patch_size=16, img_size=64)
    out = vit(torch.randn(2, 4, 64, 64), "s2")
    assert out.shape == (2, 1 + 16, dim)
    assert vit(torch.randn(2, 3, 32, 32), "aerial").shape == (2, 1 + 4, dim)  # interpolated positions
    with pytest.raises(KeyError):
        vit(torch.randn(1, 3, 32, 32), "landsat")
    vit.add_sensor("landsat", 5)
    assert vit(torch.randn(1, 5, 32, 32), "landsat").shape == (1, 5, dim)


def test_sensors_share_the_transformer() -> None:
    vit = ViT({"a": 3, "b": 3}, "vit_test", patch_size=8, img_size=32)
    shared = [n for n, _ in vit.named_parameters() if not n.startswith("patch_embed")]
    assert any(n.startswith("blocks.") for n in shared)
    assert {n.split(".")[1] for n, _ in vit.named_parameters() if n.startswith("patch_embed")} == {"a", "b"}


def test_dino_head_and_loss_centre() -> None:
    head = DINOHead(64, 128, hidden_dim=32, bottleneck_dim=16)
    s = [head(torch.randn(4, 64)) for _ in range(4)]
    t = [head(torch.randn(4, 64)).detach() for _ in range(2)]
    loss_fn = DINOLoss(128, n_crops=4, n_global=2, center_momentum=0.9)
    loss = loss_fn(s, t, teacher_temp=0.04)
    assert loss.ndim == 0 and loss > 0
    expected = 0.1 * torch.cat(t).mean(0, keepdim=True)
    assert torch.allclose(loss_fn.center, expected, atol=1e-6)
    loss.backward()
    assert head.last_layer.parametrizations.weight.original0.grad is None  # the norm is frozen


def test_ema_update() -> None:
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, 0.9 * before + 0.1 * b.weight)


def test_schedules() -> None:
    assert cosine(0, 100, 1.0, 0.0, warmup=10) == 0.0
    assert cosine(10, 100, 1.0, 0.0, warmup=10) == pytest.approx(1.0)
    assert cosine(100, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.0)
    assert cosine(55, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.5)
    assert linear_warmup(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(20, 10, 0.04, 0.07) == 0.07


def test_shared_patch_embedding() -> None:
    """One embedding for every sensor: the same image gives the same tokens whatever the sensor."""
    from msc_france.xstars.vit import ViT

    vit = ViT({"a": 3, "b": 3}, "vit_test", 8, 32, drop_path=0.0, patch_embed="shared").eval()
    assert list(vit.patch_embed) == ["shared"] and vit.has_sensor("a") and not vit.has_sensor("c")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(vit(x, "a"), vit(x, "b"))
    vit.add_sensor("c", 3)
    assert torch.equal(vit(x, "c"), vit(x, "a"))
    with pytest.raises(ValueError, match="shared embedding takes 3"):
        vit.add_sensor("d", 4)
    with pytest.raises(ValueError, match="one band count for every sensor"):
        ViT({"a": 3, "b": 4}, "vit_test", 8, 32, patch_embed="shared")
    per = ViT({"a": 3, "b": 3}, "vit_test", 8, 32, drop_path=0.0).eval()
    assert not torch.equal(per(x, "a"), per(x, "b"))
