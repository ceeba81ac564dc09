"""Features that need no learning, to be beaten: every claim of the evaluation reads "beats the
best of these".

Each baseline is an *encoder* in the sense of :mod:`msc_france.eval.features`: it maps (N, C, S, S)
images of any sensor to tokens (N, 1 + P, D), CLS first, and is scored by exactly the same code as
a trained model. Its tile vector (the CLS token) also stands for its mean-pooled feature
(``pooled_is_cls``), so "mean" and "cls" retrieval and every tile-level probe read the baseline's
one vector; its patch tokens are each 16-pixel patch's colour, z-scored per tile and channel, for
dense retrieval and segmentation.

* ``pixels``, ``thumb8-abs``: the ``4 x 4`` and ``8 x 8`` average-pooled input, as it is (absolute
  colour, :class:`PooledPixels`), beside the z-scored thumbnails;
* ``thumb{4,8,16}``: the ``g x g`` average-pooled input, z-scored per tile and channel (removes a
  per-tile gain and offset, the main radiometric nuisance between sensors);
* ``histogram``: per channel, a 10-bin histogram of the tile's pixels z-scored per tile and
  channel, on [-3, 3] (values outside clipped into the end bins), as fractions: 30 numbers for
  RGB, invariant to any rotation, flip or shift of the tile;
* random ViTs, untrained (``random-shared``: one patch embedding for every sensor, which makes a
  random ViT retrieve well when sensors look alike; ``random-per-sensor``: the models' scheme);
* ``random-conv``: a fixed random convolutional net (:mod:`msc_france.eval.rivals`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from msc_france.eval.features import Features
from msc_france.eval.metrics import ridge

HIST_BINS = 10
HIST_RANGE = 3.0
PATCH = 16


def zscore(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) standardised per image and channel (population std; flat channels become 0)."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    sd = x.std(dim=(2, 3), keepdim=True, correction=0)
    return (x - mu) / sd.clamp_min(1e-6)


def _tokens(vector: torch.Tensor, x: torch.Tensor, patch: int) -> torch.Tensor:
    """CLS = ``vector``; patch tokens = z-scored patch colours, zero-padded to the vector's width."""
    p = zscore(F.avg_pool2d(x, patch)).flatten(2).transpose(1, 2)  # (N, P, C)
    width = max(vector.shape[1], p.shape[-1])
    cls = F.pad(vector, (0, width - vector.shape[1]))[:, None]
    return torch.cat([cls, F.pad(p, (0, width - p.shape[-1]))], dim=1)


class _Baseline(nn.Module):
    """Shared by the learning-free encoders: every sensor, the tile vector as the pooled feature."""

    patch_size = PATCH
    pooled_is_cls = True

    def has_sensor(self, name: str) -> bool:
        """Every sensor: these features need no embedding."""
        return True

    def vector(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, D) tile vectors."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sensor: str) -> torch.Tensor:
        """(N, C, S, S) -> (N, 1 + (S / 16)^2, D)."""
        x = x.float()
        return _tokens(self.vector(x), x, self.patch_size)


class PooledPixels(_Baseline):
    """The ``grid x grid`` average-pooled pixels, not normalised per tile."""

    def __init__(self, grid: int = 4) -> None:
        super().__init__()
        self.grid = grid

    def vector(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pixels, channel-major."""
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)


class Thumbnail(_Baseline):
    """The ``grid x grid`` average-pooled pixels, z-scored per tile and channel."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def vector(self, x: torch.Tensor) -> torch.Tensor:
        """Z-scored thumbnail, channel-major."""
        return zscore(F.adaptive_avg_pool2d(x, self.grid)).flatten(1)


class ColourHistogram(_Baseline):
    """Per-channel histograms of the tile's z-scored pixels (rotation and shift invariant)."""

    def vector(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C * HIST_BINS) bin fractions."""
        z = zscore(x).flatten(2)  # (N, C, HW)
        width = 2 * HIST_RANGE / HIST_BINS
        idx = ((z + HIST_RANGE) / width).floor().clamp(0, HIST_BINS - 1).long()
        counts = F.one_hot(idx, HIST_BINS).sum(dim=2).float()  # (N, C, bins)
        return (counts / z.shape[-1]).flatten(1)


#: Learning-free baselines by name (the random ViTs are built in :mod:`msc_france.eval.run`,
#: with the models' architecture).
FIXED = {
    "pixels": lambda: PooledPixels(4),
    "thumb8-abs": lambda: PooledPixels(8),
    "thumb4": lambda: Thumbnail(4),
    "thumb8": lambda: Thumbnail(8),
    "thumb16": lambda: Thumbnail(16),
    "histogram": ColourHistogram,
}
RANDOM = ("random-shared", "random-per-sensor", "random-conv")
NAMES = (*FIXED, *RANDOM)


def ridge_aligned(tr: Features, others: list[Features], reference: str, lam: float,
                  max_tokens: int = 20000) -> list[Features]:
    """Every sensor's features mapped onto ``reference``'s by ridge regression fitted on co-located
    *training* tiles (tile ``i`` is the same ground in every sensor): one map for CLS tokens, one
    for mean-pooled features, one per-token map for patch tokens (fitted on at most ``max_tokens``
    training tokens). Returns the mapped training features, then each of ``others`` mapped.

    This is the cheapest cross-sensor alignment a model trained without a cross-sensor loss can
    get; a model that needs MSAD to align must beat it.
    """
    g = torch.Generator().manual_seed(0)
    sources = [tr, *others]
    mapped = [copy.copy(f) for f in sources]
    for f in mapped:
        f.cls, f.mean, f.patches = dict(f.cls), dict(f.mean), dict(f.patches)
    for s in tr.sensors:
        if s == reference:
            continue
        for name in ("cls", "mean"):
            model = ridge(getattr(tr, name)[s], getattr(tr, name)[reference], lam)
            with torch.no_grad():
                for src, dst in zip(sources, mapped, strict=True):
                    getattr(dst, name)[s] = model(getattr(src, name)[s]).float()
        x, y = tr.patches[s].flatten(0, 1), tr.patches[reference].flatten(0, 1)
        pick = torch.randperm(x.shape[0], generator=g)[:max_tokens]
        model = ridge(x[pick], y[pick], lam)
        with torch.no_grad():
            for src, dst in zip(sources, mapped, strict=True):
                p = src.patches[s]
                dst.patches[s] = model(p.flatten(0, 1)).float().reshape(p.shape[0], p.shape[1], -1)
    return mapped
