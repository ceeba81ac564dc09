"""Co-registration between the sensors of one chip, measured for every chip as it is built.

MSAD aligns token *i* of one sensor with token *i* of another, so it needs the sensors of a chip to
see the same ground; real products disagree by up to a pixel of the finer sensor (Sentinel-2 and
Landsat geolocation is specified to about 10-12 m) and the error varies from scene to scene.

Method: both images reduced to one band (the mean of their bands, over valid pixels), the reference
averaged down to the moving sensor's grid (the exact area mean: a chip's grids share their
corner), then phase
correlation (scikit-image, sub-pixel by upsampled DFT) of their gradient magnitudes, which
differing radiometry (gain, offset, haze, spectral response) changes far less than the values.
Invalid pixels are filled with the mean gradient first. The quality is the correlation of the two
gradient images once the measured shift is applied (0: nothing in common, 1: identical), and the
overlap the fraction of pixels valid in both.

``shift_x_m`` and ``shift_y_m``: where the sensor shows ground features relative to the reference,
in metres east and north.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Pixels valid in both images below which no shift is measured.
MIN_OVERLAP = 0.5
#: Sub-pixel precision of the phase correlation (1/20 pixel; 1/100 costs 5x with BLAS threads).
UPSAMPLE = 20


@dataclass(frozen=True)
class Shift:
    """The measured mis-registration of one sensor of a chip against the reference sensor."""

    x_m: float
    y_m: float
    quality: float  # correlation of the gradient images once aligned
    overlap: float  # fraction of the comparison grid valid in both


def luminance(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """One float band from stored bands (B, H, W) or a single band (H, W); NaN where invalid."""
    x = data.astype(np.float32)
    lum = x.mean(axis=0) if x.ndim == 3 else x
    return np.where(valid > 0, lum, np.nan)


def area_mean(img: np.ndarray, src_gsd: float, dst_gsd: float) -> np.ndarray:
    """Exact area mean of the finite pixels of ``img`` (pixels of ``src_gsd``) on the grid of pixel
    ``dst_gsd`` with the same origin (a chip's grids share their corner); NaN where none is finite.
    """
    from scipy import sparse

    def weights(n_src: int) -> sparse.csr_matrix:
        n_dst = int(round(n_src * src_gsd / dst_gsd))
        se, de = src_gsd * np.arange(n_src + 1), dst_gsd * np.arange(n_dst + 1)
        lo = np.maximum(de[:-1, None], se[None, :-1])
        hi = np.minimum(de[1:, None], se[None, 1:])
        return sparse.csr_matrix(np.clip(hi - lo, 0, None))

    # Sparse products: each destination pixel overlaps a few source pixels, and a dense matrix
    # product would start BLAS threads in every build thread (5x slower on 2 cores, measured).
    wy, wx = weights(img.shape[0]), weights(img.shape[1])
    ok = np.isfinite(img)

    def both(a: np.ndarray) -> np.ndarray:
        return np.asarray((wx @ (wy @ a).T).T)

    num = both(np.where(ok, img, 0).astype(np.float64))
    den = both(ok.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-9 * dst_gsd * dst_gsd, num / np.maximum(den, 1e-12), np.nan).astype(np.float32)


def _gradient(img: np.ndarray, ok: np.ndarray) -> np.ndarray:
    filled = np.where(ok, img, np.nanmean(img) if ok.any() else 0.0)
    g = np.hypot(ndimage.sobel(filled, 0), ndimage.sobel(filled, 1))
    g[~ndimage.binary_erosion(ok, iterations=1, border_value=0)] = np.nan
    m = np.nanmean(g) if np.isfinite(g).any() else 0.0
    return np.where(np.isfinite(g), g - m, 0.0)


def measure(reference: np.ndarray, moving: np.ndarray, gsd: float) -> Shift | None:
    """The shift of ``moving`` relative to ``reference``, both (H, W) on one grid of pixel size
    ``gsd`` metres with NaN where invalid; None when they overlap on too few pixels.
    """
    from skimage.registration import phase_cross_correlation

    ok_r, ok_m = np.isfinite(reference), np.isfinite(moving)
    both = ok_r & ok_m
    overlap = float(both.mean())
    if overlap < MIN_OVERLAP or min(reference.shape) < 8:
        return None
    gr, gm = _gradient(reference, ok_r & both), _gradient(moving, ok_m & both)
    if not gr.any() or not gm.any():
        return Shift(0.0, 0.0, 0.0, overlap)  # featureless: nothing to register
    (dr, dc), _, _ = phase_cross_correlation(gr, gm, upsample_factor=UPSAMPLE, normalization=None)
    aligned = ndimage.shift(gm, (dr, dc), order=1, mode="constant")
    a, b = gr.ravel(), aligned.ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    quality = float(a @ b / denom) if denom > 0 else 0.0
    # Moving features sit at -(dr, dc) pixels from the reference's: columns east, rows south.
    return Shift(round(float(-dc * gsd), 3), round(float(dr * gsd), 3), round(max(quality, 0.0), 4),
                 round(overlap, 4))


@dataclass(frozen=True)
class CoregRule:
    """What a build measures: the reference group, the other groups and their GSDs, the flag rule."""

    reference: str
    reference_gsd: float
    moving: tuple[tuple[str, float], ...]  # (group, gsd)
    max_misregistration_m: float | None = None
    min_quality: float = 0.3
    correct: bool = False  # re-read a measured sensor from a grid displaced by its shift

    def flag(self, s: Shift) -> str | None:
        """The reason to flag a chip measured ``s`` (None: not flagged)."""
        if self.max_misregistration_m is None or s.quality < self.min_quality:
            return None
        d = float(np.hypot(s.x_m, s.y_m))
        if d <= self.max_misregistration_m:
            return None
        return (f"misregistered by {d:.1f} m against {self.reference} (max_misregistration_m "
                f"{self.max_misregistration_m:g}; quality {s.quality:.2f})")


__all__ = ["MIN_OVERLAP", "CoregRule", "Shift", "area_mean", "luminance", "measure"]
