"""The rivals: a fixed random conv net that is the same on every machine, and a supervised net
that learns its sensor's labels (held-out patch accuracy far above chance on a hand-made task).
"""

from __future__ import annotations

import torch

from msc_france.eval.rivals import PATCH, ConvEncoder, fit_supervised, train_supervised


def test_the_random_conv_net_is_fixed_by_its_seed() -> None:
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    a, b, c = ConvEncoder(3, 0), ConvEncoder(3, 0), ConvEncoder(3, 1)
    ta = a(x, "any")
    assert ta.shape == (3, 1 + (64 // PATCH) ** 2, a.dim)
    assert torch.equal(ta, b(x, "other sensor")) and not torch.equal(ta, c(x, "any"))
    torch.testing.assert_close(ta[:, 0], ta[:, 1:].mean(1))  # the tile vector is the patches' mean


def _task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles whose 16-pixel patches are one of three textures (stripes, checks, flat) under a random
    brightness: the class is the texture, never the colour (a colour rule cannot solve it).
    """
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, 3, (n, 4, 4), generator=g)
    yy, xx = torch.meshgrid(torch.arange(PATCH), torch.arange(PATCH), indexing="ij")
    textures = torch.stack([(xx // 2 % 2).float(), ((xx // 2 + yy // 2) % 2).float(), torch.full((PATCH, PATCH), 0.5)])
    img = textures[cls].permute(0, 1, 3, 2, 4).reshape(n, 64, 64)
    img = img * (0.5 + torch.rand(n, 1, 1, generator=g)) + 0.1 * torch.randn(n, 64, 64, generator=g)
    labels = cls.repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2)
    return img[:, None].repeat(1, 3, 1, 1), labels


def _head_accuracy(net: ConvEncoder, head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = head(net.patches(x).flatten(2).transpose(1, 2)).argmax(-1)
    return float((pred == y[:, ::PATCH, ::PATCH].reshape(len(x), -1)).float().mean())


def test_the_supervised_rival_learns_its_sensors_labels() -> None:
    """Its same-sensor score (its own head on held-out tiles) against chance (1/3), and against the
    same net and head untrained.
    """
    x, y = _task(64, 0)
    xt, yt = _task(24, 1)  # held-out tiles
    net, head = fit_supervised(x, y, 3, seed=0, steps=80)
    assert _head_accuracy(net, head, xt, yt) > 0.9
    untrained = fit_supervised(x, y, 3, seed=0, steps=0)
    assert _head_accuracy(*untrained, xt, yt) < 0.5
    enc = train_supervised(x, y, 3, seed=0, steps=80)  # what the evaluation uses: the same net
    torch.testing.assert_close(enc(xt, "s"), net(xt, "s"))
