"""The strongest cheap rivals of a pretrained encoder, scored by the same code as every model.

* ``random-conv``: a fixed, randomly initialised convolutional net (three strided 3x3 layers with
  ReLUs, He initialisation, seeded) on the per-sensor standardised input; its patch tokens are the
  last layer's map pooled to 16-pixel patches, its tile vector their mean. With ``ridge_baselines``
  it is also scored after a ridge map onto the first sensor fitted on co-located training tiles
  (row ``random-conv+ridge``): random features plus the cheapest alignment there is.
* ``supervised-<sensor>``: the same net *trained* on one sensor's training tiles and their labels
  (per-patch dominant class, cross-entropy; no other sensor seen), then applied as is to every
  sensor: what labels on one sensor buy without any pretraining. Several seeds make a group.

Both read any sensor (one shared first layer: every sensor is fed the same bands).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msc_france.eval.features import class_lut, patch_labels, tile

PATCH = 16
WIDTHS = (32, 64, 96)


class ConvEncoder(nn.Module):
    """Three 3x3 convolutions (strides 1, 2, 2) with ReLUs; tokens pooled to 16-pixel patches."""

    patch_size = PATCH
    pooled_is_cls = False

    def __init__(self, bands: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        c = bands
        for i, w in enumerate(WIDTHS):
            conv = nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1)
            with torch.no_grad():  # He initialisation from our own generator: the same net on every machine
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (c * 9)) ** 0.5)
                conv.bias.zero_()  # type: ignore[union-attr]
            layers += [conv, nn.ReLU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.dim = c

    def has_sensor(self, name: str) -> bool:
        """Every sensor (one shared first layer)."""
        return True

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, D, S / 16, S / 16) patch features."""
        f = self.body(x.float())
        return F.adaptive_avg_pool2d(f, x.shape[-1] // PATCH)

    def forward(self, x: torch.Tensor, sensor: str) -> torch.Tensor:
        """(N, C, S, S) -> (N, 1 + (S / 16)^2, D): the mean patch token first, then the patches."""
        p = self.patches(x).flatten(2).transpose(1, 2)
        return torch.cat([p.mean(1, keepdim=True), p], 1)


def train_supervised(images: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int, steps: int = 200,
                     batch: int = 32, lr: float = 1e-3) -> ConvEncoder:
    """The encoder of :func:`fit_supervised` (its head left out: the evaluation's probes read the tokens)."""
    return fit_supervised(images, labels, n_classes, seed, steps, batch, lr)[0]


def fit_supervised(images: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int, steps: int = 200,
                   batch: int = 32, lr: float = 1e-3) -> tuple[ConvEncoder, nn.Linear]:
    """A :class:`ConvEncoder` trained on one sensor's tiles: a linear head on each patch token
    predicts the patch's dominant class (cross-entropy, patches without a label ignored).

    Args:
        images: (N, C, S, S) standardised training tiles of one sensor.
        labels: (N, S, S) class indices (-1: no label).
        n_classes: classes.
        seed: initialisation and batch order.
        steps: optimiser steps (Adam).
        batch: tiles per step.
        lr: learning rate.
    """
    torch.manual_seed(seed)
    net = ConvEncoder(images.shape[1], seed)
    head = nn.Linear(net.dim, n_classes)
    targets = patch_labels(labels, PATCH)  # (N, P)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=lr)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        pick = torch.randint(0, len(images), (min(batch, len(images)),), generator=g)
        x = images[pick]
        flip = torch.rand(len(x), generator=g) < 0.5  # flips only: the labels turn with the pixels
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = targets[pick].reshape(len(x), images.shape[-1] // PATCH, -1)
        y = torch.where(flip[:, None, None], y.flip(-1), y).reshape(len(x), -1)
        logits = head(net.patches(x).flatten(2).transpose(1, 2))
        loss = F.cross_entropy(logits.reshape(-1, n_classes), y.reshape(-1), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False), head.eval().requires_grad_(False)


def training_tiles(ds: object, sensor: str, tiles: int, class_index: dict[int, int]) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """(images, labels) of every training tile of ``sensor`` in ``ds`` (an eval dataset), labels as
    the probes' class indices (-1 where there is none).
    """
    lut = class_lut(class_index)
    xs, ys = [], []
    for n in range(len(ds)):  # type: ignore[arg-type]
        s = ds[n]  # type: ignore[index]
        xs.append(tile(s[sensor]["image"], tiles))
        m = s["mask"]
        ys.append(tile(torch.where(m >= 0, lut[m.clamp(0, len(lut) - 1)], -1)[None], tiles)[:, 0])
    return torch.cat(xs), torch.cat(ys)


__all__ = ["ConvEncoder", "fit_supervised", "train_supervised", "training_tiles"]
