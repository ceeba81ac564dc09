"""Frozen-encoder features of store chips, cut into co-located tiles.

Each chip is resized to ``tiles x input_size`` pixels per sensor and cut into ``tiles x tiles``
co-located tiles of ``input_size`` pixels, so tile ``t`` of every sensor covers the same ground.
Tiles of one chip share the chip's split. For every tile and sensor we keep the CLS token, the
mean patch token, the patch tokens, and the label raster (dominant class, class fractions and
per-patch classes). An *encoder* is anything that maps (N, C, S, S) images of a sensor to tokens
(N, 1 + P, D), CLS first: a ViT, or a learning-free baseline (:mod:`msc_france.eval.baselines`,
whose tile vector, the CLS token, also stands for its mean-pooled feature).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from msc_france.data import MSCFranceDataset


class Encoder(Protocol):
    """What the evaluation needs of an encoder: a ViT, or a learning-free baseline module."""

    patch_size: int

    def has_sensor(self, name: str) -> bool:
        """Whether it can read images of ``name``."""

    def __call__(self, x: torch.Tensor, sensor: str) -> torch.Tensor:
        """(N, C, S, S) images -> (N, 1 + P, D) tokens, CLS first."""

    def eval(self) -> Any:
        """Inference mode (torch.nn.Module.eval)."""

    def to(self, device: torch.device) -> Any:
        """Moved to ``device`` (torch.nn.Module.to)."""


@dataclass
class Features:
    """Tile features of one encoder on one split."""

    sensors: list[str]
    cls: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, D)
    mean: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, D)
    patches: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, P, D)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, 3, S, S) for figures
    labels: torch.Tensor | None = None  # (N, S, S) class indices, -1 = nodata
    chip: torch.Tensor | None = None  # (N,) chip number of each tile

    def kind(self, name: str, sensor: str) -> torch.Tensor:
        """Tile vectors of one kind: ``cls``, ``mean`` (mean patch token) or ``dense`` (every patch
        token L2-normalised, concatenated: cosine similarity = mean per-position similarity).
        """
        if name == "dense":
            p = F.normalize(self.patches[sensor].float(), dim=-1)
            return p.flatten(1) / p.shape[1] ** 0.5
        return getattr(self, name)[sensor]


def tile(x: torch.Tensor, k: int) -> torch.Tensor:
    """(C, kS, kS) -> (k*k, C, S, S), row-major."""
    c, h, w = x.shape
    s = h // k
    return x.reshape(c, k, s, k, s).permute(1, 3, 0, 2, 4).reshape(k * k, c, s, s)


def shifted_tiles(x: torch.Tensor, k: int) -> torch.Tensor:
    """(C, kS, kS) -> ((k-1)^2, C, S, S): the tiles of a grid offset by a quarter tile in x and y,
    row-major. Tile (r, c) of this grid overlaps tile (r, c) of :func:`tile` by 9/16, its largest
    overlap with any tile of that grid.
    """
    s = x.shape[-1] // k
    q = s // 4
    return tile(x[:, q : q + (k - 1) * s, q : q + (k - 1) * s], k - 1)


def dihedral(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Each (C, S, S) image of ``x`` rotated by ``code % 4`` quarter turns, then flipped left-right
    when ``code >= 4``: the eight symmetries of a square.
    """
    out = []
    for img, c in zip(x, codes.tolist(), strict=True):
        img = torch.rot90(img, c % 4, dims=(-2, -1))
        out.append(img.flip(-1) if c >= 4 else img)
    return torch.stack(out)


def query_tiles(tiles: int) -> torch.Tensor:
    """Indices, within one chip's ``tiles x tiles`` grid, of the tiles that have a counterpart in
    the shifted grid (the first ``tiles - 1`` rows and columns), in that grid's order.
    """
    return torch.tensor([r * tiles + c for r in range(tiles - 1) for c in range(tiles - 1)], dtype=torch.long)


def class_lut(class_index: dict[int, int]) -> torch.Tensor:
    """The store's class indices -> the probes' (classes present only), -1 where there is no label."""
    lut = torch.full((max(class_index, default=0) + 2,), -1, dtype=torch.long)
    for store_index, i in class_index.items():
        lut[store_index] = i
    return lut


@torch.no_grad()
def extract(vit: Encoder, ds: MSCFranceDataset, tiles: int, input_size: int, class_index: dict[int, int],
            device: torch.device, batch: int = 64, shift: bool = False, turn: bool = False,
            seed: int = 0) -> Features:
    """Features of every tile of every chip of ``ds`` (whose ``size`` must be tiles x input_size).

    With ``shift``, the tiles are those of :func:`shifted_tiles`; with ``turn``, each is turned by
    a random symmetry of the square (:func:`dihedral`, drawn from ``seed`` and the chip's position
    in ``ds``, the same for every encoder and sensor). Both make a gallery that co-location on a
    fixed layout cannot match; one alone says which of the two defeats a model. Labels are kept
    for the plain grid only.
    """
    vit.eval().to(device)
    pooled_is_cls = bool(getattr(vit, "pooled_is_cls", False))
    f = Features(list(ds.sensors))
    acc: dict[str, dict[str, list[torch.Tensor]]] = {s: {"cls": [], "mean": [], "patches": [], "images": []}
                                                     for s in ds.sensors}
    labels, chips = [], []
    lut = class_lut(class_index)
    for n in range(len(ds)):
        sample = ds[n]
        per_chip = (tiles - 1) ** 2 if shift else tiles * tiles
        if turn:  # one draw per chip, shared by every sensor
            codes = torch.randint(0, 8, (per_chip,), generator=torch.Generator().manual_seed(seed * 7919 + n))
        for s in ds.sensors:
            t = shifted_tiles(sample[s]["image"], tiles) if shift else tile(sample[s]["image"], tiles)
            t = dihedral(t, codes) if turn else t
            for b in range(0, t.shape[0], batch):
                tokens = vit(t[b : b + batch].to(device), s).float().cpu()
                acc[s]["cls"].append(tokens[:, 0])
                acc[s]["mean"].append(tokens[:, 0] if pooled_is_cls else tokens[:, 1:].mean(1))
                acc[s]["patches"].append(tokens[:, 1:])
            acc[s]["images"].append(t[:, :3])
        if "mask" in sample and not (shift or turn):
            m = sample["mask"]
            labels.append(tile(torch.where(m >= 0, lut[m.clamp(0, len(lut) - 1)], -1)[None], tiles)[:, 0])
        chips.append(torch.full((per_chip,), n))
    for s in ds.sensors:
        for k in ("cls", "mean", "patches", "images"):
            getattr(f, k)[s] = torch.cat(acc[s][k])
    f.labels = torch.cat(labels) if labels else None
    f.chip = torch.cat(chips)
    return f


def dominant(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Most frequent valid class of each (N, H, W) label tile (-1 when none is valid)."""
    out = torch.full((labels.shape[0],), -1, dtype=torch.long)
    for i, lab in enumerate(labels):
        v = lab[lab >= 0]
        if v.numel():
            out[i] = torch.bincount(v, minlength=n_classes).argmax()
    return out


def patch_labels(labels: torch.Tensor, patch: int) -> torch.Tensor:
    """Majority class per ``patch`` x ``patch`` block: (N, H, W) -> (N, H/patch * W/patch)."""
    n, h, w = labels.shape
    blocks = labels.reshape(n, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4).reshape(n, -1, patch * patch)
    valid = blocks >= 0
    classes = int(blocks.max().item()) + 1 if valid.any() else 1
    counts = torch.stack([((blocks == c) & valid).sum(-1) for c in range(classes)], dim=-1)
    return torch.where(valid.any(-1), counts.argmax(-1), torch.full(blocks.shape[:2], -1, dtype=torch.long))


def fractions(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class fractions of each (N, H, W) label tile over its valid pixels: (N, n_classes)."""
    flat = labels.reshape(labels.shape[0], -1)
    valid = (flat >= 0).sum(1, keepdim=True).clamp_min(1)
    counts = torch.stack([(flat == c).sum(1) for c in range(n_classes)], dim=1)
    return counts.float() / valid
