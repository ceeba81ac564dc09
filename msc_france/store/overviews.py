"""Overview levels: each chip area-averaged by an integer factor, stored next to full resolution.

Training reads every sensor at one input size (e.g. 128 px per 960 m chip); decoding and resizing
a 640 px aerial chip for each sample costs more than the rest of the loader. A recipe lists, per
sensor, the factors to store (``sensors.aerial.overviews: [5]``); the build derives each level
from the full-resolution chip it has just written, and the dataset reads the coarsest level that
still has at least the pixels it needs.

A level-``f`` pixel is the mean of the *valid* full-resolution pixels under it (nodata never
bleeds into an average), rounded half to even and cast to the stored dtype; it is valid when at
least half of those pixels are valid, and 0 (nodata) when none are.
"""

from __future__ import annotations

import numpy as np

#: Where level ``f`` of a group lives: ``<group>/overviews/<f>/{image,valid}``.
OVERVIEWS = "overviews"


def overview_path(group: str, factor: int) -> str:
    """The sub-group holding overview ``factor`` of ``group``."""
    return f"{group}/{OVERVIEWS}/{factor}"


def area_average(image: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """One chip's overview at ``factor``.

    Args:
        image: (bands, H, W), any integer or float dtype; H and W divisible by ``factor``.
        valid: (H, W), nonzero where the pixel is valid.
        factor: integer reduction (2 halves the side).

    Returns:
        (image (bands, H/f, W/f) in the input dtype, valid (H/f, W/f) uint8).
    """
    b, h, w = image.shape
    if h % factor or w % factor:
        raise ValueError(f"a {h} x {w} chip is not divisible by the overview factor {factor}")
    hh, ww = h // factor, w // factor
    v = (valid != 0).reshape(hh, factor, ww, factor)
    count = v.sum(axis=(1, 3))
    total = np.where(v[None], image.reshape(b, hh, factor, ww, factor), 0).sum(axis=(2, 4), dtype=np.float64)
    mean = total / np.maximum(count, 1)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        mean = np.clip(np.rint(mean), info.min, info.max)
    out = np.where(count > 0, mean, 0).astype(image.dtype)
    return out, (2 * count >= factor * factor).astype(np.uint8)


def shard_overview(data: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`area_average` of every chip of a shard: data (n, bands, H, W), valid (n, H, W)."""
    pairs = [area_average(d, v, factor) for d, v in zip(data, valid, strict=True)]
    n, b, h, w = data.shape
    if not pairs:
        return (np.zeros((0, b, h // factor, w // factor), data.dtype),
                np.zeros((0, h // factor, w // factor), np.uint8))
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
