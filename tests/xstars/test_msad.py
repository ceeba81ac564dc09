"""MSAD: vectorised == per-position loop; hard targets are CLIP's InfoNCE; gradients reach backbone and heads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from msc_france.xstars.msad import MSADHeads, msad_loss, msad_pair, msad_pair_loop
from msc_france.xstars.vit import ViT


def _emb(b: int = 6, p: int = 5, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e1 = torch.nn.functional.normalize(torch.randn(b, p, d, generator=g), dim=-1)
    e2 = torch.nn.functional.normalize(e1 + 0.5 * torch.randn(b, p, d, generator=g), dim=-1)
    return e1, e2


def test_vectorised_equals_loop() -> None:
    for seed, tau, eps in [(0, 0.1, 0.3), (1, 0.07, 0.0), (2, 1.0, 0.1)]:
        for targets in ("hard", "soft"):
            e1, e2 = _emb(seed=seed)
            assert torch.allclose(msad_pair(e1, e2, tau, eps, targets), msad_pair_loop(e1, e2, tau, eps, targets),
                                  atol=1e-5), (seed, targets)


def test_hard_targets_are_symmetric_infonce() -> None:
    """Hard targets: per position, CLIP's loss written with torch's own cross-entropy (labels = the
    matching index), averaged over both directions and positions.
    """
    e1, e2 = _emb(b=7, p=4, seed=5)
    tau = 0.1
    labels = torch.arange(7)
    per_position = []
    for i in range(4):
        logits = e2[:, i] @ e1[:, i].T / tau
        per_position.append((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2)
    assert torch.allclose(msad_pair(e1, e2, tau, 0.0, "hard"), torch.stack(per_position).mean(), atol=1e-6)
    assert torch.allclose(msad_pair(e1, e2, tau, 0.2, "hard"), torch.stack([
        (F.cross_entropy(e2[:, i] @ e1[:, i].T / tau, labels, label_smoothing=0.2)
         + F.cross_entropy(e1[:, i] @ e2[:, i].T / tau, labels, label_smoothing=0.2)) / 2 for i in range(4)]).mean(),
        atol=1e-6)


def test_soft_targets_ask_nothing_of_agreeing_sensors() -> None:
    """Why hard targets are the default: once two sensors agree (e1 == e2), the soft targets equal
    the softmax of the logits (KL = 0), however alike the places are, so the loss is already at
    its minimum for those targets; hard targets still charge ~ln(B) for places that look alike.
    """
    b, tau = 8, 0.1
    g = torch.Generator().manual_seed(0)
    e = F.normalize(torch.randn(1, 1, 16, generator=g) + 0.05 * torch.randn(b, 1, 16, generator=g), dim=-1)
    t = F.softmax(e[:, 0] @ e[:, 0].T / tau, dim=-1)  # the reference code's targets, written out
    entropy = -(t * t.log()).sum(-1).mean()
    assert entropy > 0.9 * math.log(b)  # nearly uniform: the places are hardly told apart
    assert torch.allclose(msad_pair(e, e, tau, targets="soft"), entropy, atol=1e-5)  # KL = 0
    assert msad_pair(e, e, tau, targets="hard") > 0.9 * math.log(b)
    distinct = F.normalize(torch.eye(b, 16)[:, None], dim=-1)  # b different places, perfectly aligned
    assert msad_pair(distinct, distinct, tau, targets="hard") < 0.01


def test_unknown_targets_are_refused() -> None:
    e1, e2 = _emb()
    with pytest.raises(ValueError, match="hard' or 'soft"):
        msad_pair(e1, e2, targets="uniform")  # type: ignore[arg-type]


def test_vectorised_gradients_equal_loop_gradients() -> None:
    e1, e2 = _emb(seed=3)
    a1, a2 = e1.clone().requires_grad_(), e2.clone().requires_grad_()
    b1, b2 = e1.clone().requires_grad_(), e2.clone().requires_grad_()
    msad_pair(a1, a2).backward()
    msad_pair_loop(b1, b2).backward()
    assert torch.allclose(a1.grad, b1.grad, atol=1e-6) and torch.allclose(a2.grad, b2.grad, atol=1e-6)


def test_aligned_pairs_score_lower_than_shuffled() -> None:
    e1, e2 = _emb(b=8, seed=4)
    shuffled = e2[torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    assert msad_pair(e1, e2) < msad_pair(e1, shuffled)


def test_msad_alone_reaches_backbone_and_heads() -> None:
    torch.manual_seed(0)
    vit = ViT({"s2": 3, "l8": 3}, "vit_test", patch_size=8, img_size=32, drop_path=0.0)
    heads = MSADHeads(vit.dim, ["s2", "l8"], proj_dim=32, dropout=0.0, per_sensor=True)
    x = torch.randn(4, 3, 32, 32)
    emb = {s: heads(vit(x + 0.1 * torch.randn_like(x), s), s) for s in ("s2", "l8")}
    loss = msad_loss(emb)
    loss.backward()
    for name, module in [("patch embed", vit.patch_embed["s2"]), ("block", vit.blocks[0]),
                         ("shared head", heads.shared), ("sensor head", heads.per_sensor["l8"])]:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_reference_formulation_has_no_gradient() -> None:
    """The authors' ``torch.mean(torch.tensor(list))`` detaches; ours does not."""
    e1, e2 = _emb()
    e1.requires_grad_()
    per_position = [msad_pair(e1[:, i : i + 1], e2[:, i : i + 1]) for i in range(e1.shape[1])]
    reference = torch.mean(torch.tensor([float(v.detach()) for v in per_position]))  # as the authors wrote it
    assert not reference.requires_grad
    ours = msad_pair(e1, e2)
    assert ours.requires_grad and torch.allclose(ours, reference, atol=1e-5)


def test_shared_heads_have_no_per_sensor_parameters() -> None:
    """By default one head projects every sensor: the same tokens give the same embedding."""
    heads = MSADHeads(16, ["s2", "l8"], proj_dim=8, dropout=0.0).eval()
    assert not list(heads.per_sensor.parameters())
    t = torch.randn(2, 5, 16)
    assert torch.equal(heads(t, "s2"), heads(t, "l8"))
    per = MSADHeads(16, ["s2", "l8"], proj_dim=8, dropout=0.0, per_sensor=True).eval()
    assert not torch.equal(per(t, "s2"), per(t, "l8"))


def _reference_transcription(x1: torch.Tensor, x2: torch.Tensor, shared: torch.nn.Module, head1: torch.nn.Module,
                             head2: torch.nn.Module, tau: float = 1.0, smoothing: float = 0.3) -> torch.Tensor:
    """The reference code's MSAD written out directly, one position at a time, as its CLIP-style
    loss reads: project each side (shared head, then that side's head; no normalisation), logits
    e2 e1^T / tau, targets softmax((e1 e1^T + e2 e2^T) / 2 * tau), torch's cross-entropy with
    label smoothing in both directions, mean over the batch, then over positions (with the
    gradient kept, the one fix).
    """
    losses = []
    for i in range(x1.shape[1]):
        e1 = head1(shared(x1[:, i]))
        e2 = head2(shared(x2[:, i]))
        logits = (e2 @ e1.T) / tau
        targets = F.softmax((e1 @ e1.T + e2 @ e2.T) / 2 * tau, dim=-1)
        texts = F.cross_entropy(logits, targets, reduction="none", label_smoothing=smoothing)
        images = F.cross_entropy(logits.T, targets.T, reduction="none", label_smoothing=smoothing)
        losses.append(((images + texts) / 2.0).mean())
    return torch.stack(losses).mean()


def test_reference_preset_equals_a_transcription_of_the_reference_loss() -> None:
    from msc_france.xstars.config import MSADConfig

    cfg = MSADConfig(preset="reference")
    assert (cfg.heads, cfg.normalize, cfg.proj_dim, cfg.tau, cfg.targets, cfg.smoothing, cfg.alpha) == (
        "per-argument", False, 1024, 1.0, "soft", 0.3, 0.1)
    assert MSADConfig(preset="reference", tau=0.5).tau == 0.5  # explicit keys override the preset
    torch.manual_seed(0)
    heads = MSADHeads(24, ["a", "b"], proj_dim=cfg.proj_dim, dropout=0.0, layout=cfg.heads,
                      normalize=cfg.normalize).double()  # float64: logits of unnormalised 1024-d vectors
    g = torch.Generator().manual_seed(3)
    x1 = (0.2 * torch.randn(6, 4, 24, generator=g, dtype=torch.float64)).requires_grad_()
    x2 = (x1.detach() + 0.2 * torch.randn(6, 4, 24, generator=g, dtype=torch.float64)).requires_grad_()
    ea, eb = heads.arguments(x1, "a"), heads.arguments(x2, "b")
    ours = msad_loss({"a": ea[:, 0], "b": eb[:, 0]}, cfg.tau, cfg.smoothing, targets=cfg.targets,
                     second={"a": ea[:, 1], "b": eb[:, 1]})
    ref = _reference_transcription(x1, x2, heads.shared, heads.per_argument[0], heads.per_argument[1])
    assert torch.isfinite(ref) and torch.allclose(ours, ref, rtol=1e-9, atol=1e-9)
    params = [x1, x2, *heads.parameters()]
    g_ours = torch.autograd.grad(ours, params, allow_unused=True)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert a is not None and b is not None  # every head is trained, the inputs get a gradient
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)
    assert float(g_ours[0].abs().sum()) > 0


def test_reference_preset_trains_end_to_end(tiny_store, tmp_path) -> None:  # noqa: ANN001
    from msc_france.xstars.checkpoint import load_checkpoint
    from msc_france.xstars.train import pretrain
    from tests.helpers import train_config

    cfg = train_config(tiny_store, tmp_path / "run", optim__steps=2, msad__preset="reference", msad__alpha=1.0)
    summary = pretrain(cfg)
    assert len(summary.losses) == 2 and all(math.isfinite(v) for v in summary.losses)
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    keys = [k for k in ck.student if k.startswith("msad_heads.per_argument.")]
    assert keys and not cfg.msad.normalize and cfg.msad.targets == "soft"  # the preset under the helper's width


def test_global_positions_pool_before_the_heads(tiny_store, tmp_path) -> None:  # noqa: ANN001
    from msc_france.xstars.msad import positions
    from msc_france.xstars.train import pretrain
    from tests.helpers import train_config

    tok = torch.randn(3, 5, 4)
    assert torch.equal(positions(tok, "all"), tok)
    assert torch.equal(positions(tok, "cls"), tok[:, :1])
    assert torch.allclose(positions(tok, "mean"), tok[:, 1:].mean(1, keepdim=True))
    with pytest.raises(ValueError, match="tokens"):
        positions(tok, "max")  # type: ignore[arg-type]
    cfg = train_config(tiny_store, tmp_path / "run", optim__steps=2, msad__tokens="mean")
    assert all(math.isfinite(v) for v in pretrain(cfg).losses)
