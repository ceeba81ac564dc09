"""Augmentations in plain torch: DINO multi-crop and co-located crops across sensors.

All randomness comes from an explicit ``torch.Generator``, so a training step's augmentations are
a function of (seed, step): resuming from a checkpoint replays them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field

from msc_france.config.base import StrictModel

Window = tuple[float, float, float, float]  # x0, y0, w, h as fractions of the chip


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def random_window(grid: int, scale: tuple[float, float], g: torch.Generator,
                  ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Window:
    """A random window on a ``grid`` x ``grid`` pixel lattice, as chip fractions.

    Windows are snapped to the lattice of the coarsest sensor, which every finer sensor's
    lattice refines exactly (chip sizes are integer multiples of every GSD): cropping the same
    fractions from each sensor selects exactly the same ground.
    """
    for _ in range(10):
        area = _u(g, *scale)
        r = math.exp(_u(g, math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(area * r) * grid))
        h = int(round(math.sqrt(area / r) * grid))
        if 1 <= w <= grid and 1 <= h <= grid:
            x0 = int(torch.randint(0, grid - w + 1, (1,), generator=g))
            y0 = int(torch.randint(0, grid - h + 1, (1,), generator=g))
            return (x0 / grid, y0 / grid, w / grid, h / grid)
    return (0.0, 0.0, 1.0, 1.0)


def crop_resize(x: torch.Tensor, window: Window, size: int) -> torch.Tensor:
    """Crop chip fractions ``window`` from (..., C, H, W) and resize to ``size`` (antialiased)."""
    H, W = x.shape[-2:]
    x0, y0, w, h = window
    c0, r0 = int(round(x0 * W)), int(round(y0 * H))
    c1, r1 = max(c0 + 1, int(round((x0 + w) * W))), max(r0 + 1, int(round((y0 + h) * H)))
    crop = x[..., r0:r1, c0:c1]
    squeeze = crop.dim() == 3
    if squeeze:
        crop = crop[None]
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=crop.shape[-1] > size)
    return out[0] if squeeze else out


def colocated_crops(images: dict[str, torch.Tensor], window: Window, size: int) -> dict[str, torch.Tensor]:
    """The same ground window from every sensor, each resized to ``size``: token i of a ViT then
    covers the same ground in every sensor."""
    return {s: crop_resize(x, window, size) for s, x in images.items()}


def ground_order(geom: CropGeometry, grid: int) -> torch.Tensor:
    """The patch tokens of a view turned by ``geom`` put back in ground order: ``tokens[:, order]``
    (patch tokens only, a ``grid`` x ``grid`` raster) is the token of ground position ``p`` at ``p``.

    A flip or a quarter turn of a square image moves whole patches (the patch grid divides the
    image), so the view's token at grid position ``q`` covers the ground of position ``t[q]``,
    where ``t`` is the index raster turned the same way; sorting ``t`` inverts that.
    """
    t = geom.apply(torch.arange(grid * grid).reshape(grid, grid))
    return torch.argsort(t.flatten())


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = max(3, int(2 * round(3 * sigma) + 1))
    t = torch.arange(k, dtype=x.dtype) - k // 2
    w = torch.exp(-(t**2) / (2 * sigma**2))
    w = w / w.sum()
    c = x.shape[0]
    x = F.pad(x[None], (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    x = F.conv2d(x, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    x = F.conv2d(x, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return x[0]


class MultiCropConfig(StrictModel):
    """DINO multi-crop parameters (sizes in pixels of the network input); the ``dino`` section of a
    training config is one (:class:`~msc_france.xstars.config.DinoConfig` extends it).
    """

    global_crops: int = Field(2, ge=2)
    local_crops: int = Field(4, ge=0)
    global_size: int = Field(64, ge=8, le=4096)
    local_size: int = Field(32, ge=8, le=4096)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    dihedral: bool = Field(False, description="random quarter turns as well as flips in the DINO views")


@dataclass(frozen=True)
class CropGeometry:
    """Where a view was cut and how it was turned: enough to cut the same view from another sensor."""

    window: Window
    flip: bool = False
    quarter_turns: int = 0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The flip then the turns of this view, on (..., H, W)."""
        if self.flip:
            x = torch.flip(x, dims=[-1])
        return torch.rot90(x, self.quarter_turns, dims=(-2, -1)) if self.quarter_turns else x

    def cut(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """The same ground and orientation from another sensor's co-registered chip (C, H, W)."""
        return self.apply(crop_resize(x, self.window, size))


def photometric(x: torch.Tensor, g: torch.Generator, blur_p: float, solarize_p: float,
                dihedral: bool = False) -> torch.Tensor:
    """DINO's colour augmentations adapted to standardised multispectral bands.

    ``dihedral`` adds a random quarter turn to DINO's horizontal flip: an overhead image has no
    up, so every symmetry of the square is a view of the same ground.
    """
    return _photometric(x, g, blur_p, solarize_p, dihedral, (0.0, 0.0, 1.0, 1.0))[0]


def _photometric(x: torch.Tensor, g: torch.Generator, blur_p: float, solarize_p: float, dihedral: bool,
                 window: Window) -> tuple[torch.Tensor, CropGeometry]:
    flip = _u(g) < 0.5
    turns = int(torch.randint(0, 4, (1,), generator=g)) if dihedral else 0
    geom = CropGeometry(window, flip, turns)
    x = geom.apply(x)
    if _u(g) < 0.8:  # brightness, contrast, per-band jitter
        mean = x.mean()
        x = (x - mean) * _u(g, 0.6, 1.4) + mean + _u(g, -0.4, 0.4)
        x = x * (1 + 0.1 * (torch.rand(x.shape[0], 1, 1, generator=g) - 0.5))
    if _u(g) < 0.2:  # "grayscale": every band replaced by the band mean
        x = x.mean(dim=0, keepdim=True).expand_as(x).clone()
    if _u(g) < blur_p:
        x = _blur(x, _u(g, 0.1, 2.0) * x.shape[-1] / 224 * 4)
    if _u(g) < solarize_p:
        x = torch.where(x > 0, -x, x)
    return x, geom


def multicrop(images: torch.Tensor, cfg: MultiCropConfig, g: torch.Generator) -> list[torch.Tensor]:
    """DINO views of a batch of one sensor's images (N, C, H, W): global crops first, then local.

    Returns ``global_crops + local_crops`` tensors of shape (N, C, size, size).
    """
    return multicrop_with_geometry(images, cfg, g)[0]


def multicrop_with_geometry(images: torch.Tensor, cfg: MultiCropConfig, g: torch.Generator
                            ) -> tuple[list[torch.Tensor], list[list[CropGeometry]]]:
    """:func:`multicrop`, and per view and image the :class:`CropGeometry` it was cut with (the
    random draws are the same: both give the same views)."""
    n, _, H, _ = images.shape
    views: list[torch.Tensor] = []
    geoms: list[list[CropGeometry]] = []
    specs = [(cfg.global_size, cfg.global_scale, 1.0 if k == 0 else 0.1, 0.0 if k == 0 else 0.2)
             for k in range(cfg.global_crops)]
    specs += [(cfg.local_size, cfg.local_scale, 0.5, 0.0)] * cfg.local_crops
    for size, scale, blur_p, sol_p in specs:
        crops = []
        cuts = []
        for i in range(n):
            w = random_window(H, scale, g)
            x, geom = _photometric(crop_resize(images[i], w, size), g, blur_p, sol_p, cfg.dihedral, w)
            crops.append(x)
            cuts.append(geom)
        views.append(torch.stack(crops))
        geoms.append(cuts)
    return views, geoms
