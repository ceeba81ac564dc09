"""The cheaper X-STARS step: batched forwards, the reused DINO crop, partners in turn, autocast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from msc_france.data import Batch
from msc_france.data.transforms import CropGeometry, MultiCropConfig, multicrop, multicrop_with_geometry
from msc_france.xstars.config import TrainConfig
from msc_france.xstars.msad import MSADHeads, msad_loss
from msc_france.xstars.step import partners
from msc_france.xstars.train import pretrain
from msc_france.xstars.vit import ViT
from tests.helpers import train_config as _cfg

SENSORS = {"s2": 3, "l8": 3, "aerial": 3}


def _losses_and_grads(batched: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    vit = ViT(SENSORS, "vit_test", patch_size=8, img_size=32, drop_path=0.0)
    heads = MSADHeads(vit.dim, list(SENSORS), 16, dropout=0.0)
    g = torch.Generator().manual_seed(1)
    views = {s: torch.randn(6, 3, 32, 32, generator=g) for s in SENSORS}
    if batched:
        toks = dict(zip(views, vit.forward_many(list(views.items())), strict=True))
    else:
        toks = {s: vit(x, s) for s, x in views.items()}
    loss = msad_loss({s: heads(t, s) for s, t in toks.items()}, tau=0.1)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in [*vit.named_parameters(), *heads.named_parameters()] if p.grad is not None}
    return loss.detach(), grads


def test_one_batched_forward_equals_one_forward_per_sensor() -> None:
    """forward_many (one batch through the blocks) leaves the MSAD loss and every gradient as the
    per-sensor forwards give them.
    """
    l1, g1 = _losses_and_grads(batched=False)
    l2, g2 = _losses_and_grads(batched=True)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g2.keys() and any(k.startswith("patch_embed.aerial") for k in g1)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-6)


def test_forward_many_keeps_batches_of_other_sizes_apart() -> None:
    torch.manual_seed(0)
    vit = ViT(SENSORS, "vit_test", patch_size=8, img_size=32, drop_path=0.0).eval()
    a, b, c = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 16, 16), torch.randn(2, 3, 32, 32)
    out = vit.forward_many([("s2", a), ("l8", b), ("s2", c)])
    assert [o.shape[:2] for o in out] == [(2, 17), (3, 5), (2, 17)]
    for o, (s, x) in zip(out, [("s2", a), ("l8", b), ("s2", c)], strict=True):
        torch.testing.assert_close(o, vit(x, s), rtol=1e-5, atol=1e-5)


def test_crop_geometry_cuts_the_same_ground_from_a_finer_sensor() -> None:
    """A view's geometry cut from a 4x finer co-registered chip is the same ground, flipped and
    turned the same way: the two views agree (up to resampling), and not with a mis-turned view.
    """
    coarse = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 16, 16)
    fine = coarse.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    geom = CropGeometry((0.25, 0.5, 0.5, 0.25), flip=True, quarter_turns=1)
    a = geom.cut(coarse, 8)  # 8 x 4 px of the coarse chip -> 8 x 8
    b = geom.cut(fine, 8)
    # Independently: the window's pixels, flipped left-right, turned a quarter anticlockwise.
    want = torch.rot90(torch.flip(coarse[:, 8:12, 4:12], dims=[-1]), 1, dims=(-2, -1))
    want = torch.nn.functional.interpolate(want[None], size=(8, 8), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(a, want)
    assert (a - b).abs().max() < 3.0  # resampling only: the ramp rises 1 per column, 16 per row
    wrong = CropGeometry(geom.window, flip=False, quarter_turns=1).cut(fine, 8)
    assert (a - wrong).abs().max() > 5.0


def test_multicrop_geometry_is_a_record_of_the_same_draws() -> None:
    imgs = torch.randn(3, 3, 32, 32)
    cfg = MultiCropConfig(global_crops=2, local_crops=2, global_size=32, local_size=16, dihedral=True)
    plain = multicrop(imgs, cfg, torch.Generator().manual_seed(5))
    views, geoms = multicrop_with_geometry(imgs, cfg, torch.Generator().manual_seed(5))
    assert len(geoms) == 4 and all(len(gm) == 3 for gm in geoms)
    for p, v in zip(plain, views, strict=True):
        torch.testing.assert_close(p, v)
    assert {gm.quarter_turns for row in geoms for gm in row} - {0, 1, 2, 3} == set()


def test_partners_take_turns_over_every_ordered_pair(tiny_store: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_store, tmp_path, msad__views="dino")
    sensors = cfg.data.sensors
    pairs = [(sensors[step % 3], p) for step in range(6) for p in partners(cfg, sensors[step % 3], step)]
    assert sorted(pairs) == sorted((a, b) for a in sensors for b in sensors if a != b)
    two = _cfg(tiny_store, tmp_path, msad__views="dino", msad__partners=2)
    assert sorted(partners(two, sensors[0], 0)) == sorted(sensors[1:])


def test_reused_crop_needs_the_global_size(tiny_store: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="msad.size"):
        _cfg(tiny_store, tmp_path, msad__views="dino", msad__size=16)


@pytest.mark.timeout(300)
def test_reused_crop_trains_and_aligns_its_pairs(tiny_store: Path, tmp_path: Path) -> None:
    s = pretrain(_cfg(tiny_store, tmp_path / "dino-views", msad__views="dino", optim__steps=24))
    rows = [json.loads(line) for line in (tmp_path / "dino-views" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(torch.isfinite(torch.tensor(s.losses)))
    msad = [r["msad"] for r in rows]
    assert all(m > 0 for m in msad)
    assert sum(msad[-5:]) / 5 < 0.85 * sum(msad[:5]) / 5


def test_bf16_autocast_on_cpu_keeps_the_losses_in_fp32(tiny_store: Path, tmp_path: Path) -> None:
    """run.amp: bf16 runs the backbone in bfloat16 on CPU too; DINO and MSAD are computed in fp32."""
    cfg: TrainConfig = _cfg(tiny_store, tmp_path / "amp", optim__steps=3, run__device="cpu", run__amp="bf16")
    seen: dict[str, list[torch.dtype]] = {"tokens": [], "msad": []}
    import msc_france.xstars.step as train  # where the losses are computed
    from msc_france.xstars.vit import Attention

    real_loss, real_fwd = train.msad_loss, Attention.forward

    def spy_loss(emb, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen["msad"] += [e.dtype for e in emb.values()]
        out = real_loss(emb, *a, **k)
        seen["msad"].append(out.dtype)
        return out

    def spy_fwd(self, t):  # noqa: ANN001, ANN202
        out = real_fwd(self, t)
        seen["tokens"].append(out.dtype)
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(train, "msad_loss", spy_loss)
    mp.setattr(Attention, "forward", spy_fwd)
    try:
        s = pretrain(cfg)
    finally:
        mp.undo()
    assert set(seen["tokens"]) == {torch.bfloat16}  # attention's matrix products ran in bfloat16
    assert set(seen["msad"]) == {torch.float32}  # the loss saw fp32 and returned fp32
    assert all(torch.isfinite(torch.tensor(s.losses)))


def test_micro_batches_split_the_batch_exactly(tiny_store: Path, tmp_path: Path) -> None:
    from msc_france.data import Batch
    from msc_france.errors import BadInputError
    from msc_france.xstars.step import micro_batches as _micro_batches

    batch = Batch({"s2": torch.arange(8.0).view(8, 1, 1, 1), "l8": -torch.arange(8.0).view(8, 1, 1, 1)},
                  chip_id=[str(i) for i in range(8)])
    parts = _micro_batches(batch, 4)
    assert len(parts) == 4 and all(p.sensors == ["s2", "l8"] and len(p) == 2 for p in parts)
    torch.testing.assert_close(torch.cat([p.images["s2"] for p in parts]), batch.images["s2"])
    with pytest.raises(BadInputError, match="8 samples per process does not split into 3"):
        _micro_batches(batch, 3)
    with pytest.raises(ValueError, match="micro-batches"):
        _cfg(tiny_store, tmp_path, optim__accumulate=3)  # batch 4


@pytest.mark.timeout(300)
def test_gradient_accumulation_trains(tiny_store: Path, tmp_path: Path) -> None:
    one = pretrain(_cfg(tiny_store, tmp_path / "a1", optim__steps=3))
    two = pretrain(_cfg(tiny_store, tmp_path / "a2", optim__steps=3, optim__accumulate=2))
    assert len(two.losses) == 3 and all(torch.isfinite(torch.tensor(two.losses)))
    assert two.losses != one.losses  # MSAD over micro-batches of 2 has fewer negatives
    rows = [json.loads(line) for line in (tmp_path / "a2" / "log.jsonl").read_text().splitlines()]
    assert all(r["msad"] > 0 for r in rows)


def _masked_full_forward(vit: ViT, x: torch.Tensor, sensor: str, keep: torch.Tensor) -> torch.Tensor:
    """Independent of token dropping: every token goes through every block, but attention may only
    look at the CLS token and the kept positions (a key mask); the kept rows are read at the end.
    """
    t = vit._embed(x, sensor)
    allowed = torch.zeros(t.shape[1], dtype=torch.bool)
    allowed[0] = True
    allowed[1 + keep] = True
    for blk in vit.blocks:
        h = blk.norm1(t)
        b, n, d = h.shape
        qkv = blk.attn.qkv(h).view(b, n, 3, blk.attn.heads, d // blk.attn.heads).permute(2, 0, 3, 1, 4)
        att = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=allowed[None, :])
        t = t + blk.attn.proj(att.transpose(1, 2).reshape(b, n, d))
        t = t + blk.mlp(blk.norm2(t))
    return vit.norm(t)[:, torch.cat([torch.zeros(1, dtype=torch.long), 1 + keep])]


def test_dropped_tokens_equal_a_key_masked_full_forward() -> None:
    """msad.keep's token dropping: the kept tokens equal those of a full forward whose attention
    cannot see the dropped positions; keeping every position is the plain forward.
    """
    torch.manual_seed(0)
    vit = ViT(SENSORS, "vit_test", patch_size=8, img_size=32, drop_path=0.0).eval()
    x, y = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    keep = torch.tensor([0, 3, 4, 9, 15])
    with torch.no_grad():
        glob, dropped, other = vit.forward_many([("s2", x), ("l8", y), ("aerial", y)], keep=[None, keep, keep])
        torch.testing.assert_close(glob, vit(x, "s2"), rtol=1e-5, atol=1e-5)
        assert dropped.shape == (3, 1 + len(keep), vit.dim)
        torch.testing.assert_close(dropped, _masked_full_forward(vit, y, "l8", keep), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(other, _masked_full_forward(vit, y, "aerial", keep), rtol=1e-4, atol=1e-5)
        every = vit.forward_many([("l8", y)], keep=[torch.arange(16)])[0]
        torch.testing.assert_close(every, vit(y, "l8"), rtol=1e-5, atol=1e-5)


def test_kept_positions_are_one_sorted_draw_of_the_asked_fraction(tiny_store: Path, tmp_path: Path) -> None:
    from msc_france.xstars.step import kept_positions

    cfg = _cfg(tiny_store, tmp_path, msad__keep=0.25)
    n = (cfg.msad.size // 8) ** 2
    a = kept_positions(cfg, 8, torch.Generator().manual_seed(3), torch.device("cpu"))
    b = kept_positions(cfg, 8, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert a is not None and b is not None and torch.equal(a, b)
    assert len(a) == round(0.25 * n) and len(set(a.tolist())) == len(a)
    assert torch.equal(a, a.sort().values) and int(a.max()) < n
    assert kept_positions(_cfg(tiny_store, tmp_path), 8, torch.Generator(), torch.device("cpu")) is None
    with pytest.raises(ValueError, match="msad.keep"):
        _cfg(tiny_store, tmp_path, msad__keep=0.5, msad__views="dino")


@pytest.mark.timeout(300)
def test_token_dropping_trains_and_aligns(tiny_store: Path, tmp_path: Path) -> None:
    s = pretrain(_cfg(tiny_store, tmp_path / "keep", msad__keep=0.5, optim__steps=24))
    msad = [json.loads(line)["msad"] for line in (tmp_path / "keep" / "log.jsonl").read_text().splitlines()]
    assert len(msad) == 24 and all(torch.isfinite(torch.tensor(s.losses)))
    assert sum(msad[-5:]) / 5 < 0.85 * sum(msad[:5]) / 5


def test_ground_order_puts_turned_patches_back_where_their_ground_is() -> None:
    from msc_france.data.transforms import ground_order

    grid, ps = 4, 3
    x = np.random.default_rng(0).normal(size=(2, grid * ps, grid * ps)).astype(np.float32)

    def patches(a: np.ndarray) -> np.ndarray:  # (C, H, W) -> (grid * grid, C, ps, ps), row-major
        return a.reshape(2, grid, ps, grid, ps).transpose(1, 3, 0, 2, 4).reshape(grid * grid, 2, ps, ps)

    for code in range(8):
        geom = CropGeometry((0.0, 0.0, 1.0, 1.0), flip=code >= 4, quarter_turns=code % 4)
        turned = geom.apply(torch.from_numpy(x)).numpy()
        back = patches(turned)[ground_order(geom, grid).numpy()]
        for p, orig in enumerate(patches(x)):  # the same ground, its pixels turned within the patch
            want = np.rot90(orig[:, :, ::-1] if code >= 4 else orig, code % 4, axes=(1, 2))
            np.testing.assert_array_equal(back[p], want)


def test_dihedral_views_align_tokens_by_ground(tiny_store: Path, tmp_path: Path) -> None:
    """With msad.dihedral each sensor's view is turned its own way; after ``to_ground`` position i
    of every sensor is the same ground. Images constant within each patch make that exact.
    """
    from msc_france.xstars.step import msad_inputs

    cfg = _cfg(tiny_store, tmp_path, msad__dihedral=True, msad__scale=(1.0, 1.0))
    sensors = cfg.data.sensors
    g = torch.Generator().manual_seed(3)
    ground = torch.rand(4, 3, 4, 4, generator=g)  # 4 x 4 patches of 8 px at 32 px
    img = ground.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    batch = Batch({s: img.clone() for s in sensors})
    m = msad_inputs(cfg, batch, None, g, torch.device("cpu"), sensors[0], 0, [], patch_size=8)
    assert m.orders is not None and {s: o.shape for s, o in m.orders.items()} == dict.fromkeys(sensors, (4, 16))
    turned = [not torch.equal(m.views[s], img) for s in sensors]
    assert any(turned)  # some views were turned (else the test proves nothing)

    def emb(v: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, 1, 1 + 16, 3): a "CLS", then patch means
        p = v.reshape(4, 3, 4, 8, 4, 8).mean(dim=(3, 5)).flatten(2).transpose(1, 2)
        return torch.cat([torch.zeros(4, 1, 3), p], dim=1)[:, None]

    raw = {s: emb(v) for s, v in m.views.items()}
    back = m.to_ground(raw)
    want = ground.flatten(2).transpose(1, 2)
    for s in sensors:
        torch.testing.assert_close(back[s][:, 0, 1:], want)
    assert any(not torch.equal(raw[s][:, 0, 1:], want) for s in sensors)
    with pytest.raises(ValueError, match="msad.dihedral"):
        _cfg(tiny_store, tmp_path, msad__dihedral=True, msad__keep=0.5)
