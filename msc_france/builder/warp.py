"""Warping one asset onto a chip's pixel grid, with the coverage the source itself declares.

``rasterio.warp.reproject`` (GDAL's warper) reads only the source blocks under the chip and
resamples them onto the chip's explicit Lambert-93 grid. Two settings make it exact:

- ``XSCALE=1, YSCALE=1``: otherwise GDAL widens the bilinear/cubic kernel whenever the source
  window is a little larger than the destination (any UTM -> Lambert-93 rotation), smoothing the
  image (18 % of pixels within 1 DN of exact bilinear without it, 100 % with it). Not used for
  ``average``, whose kernel must follow the scale change.
- a destination alpha band: GDAL marks a pixel covered only where the source has data, by the
  file's nodata, its internal mask or its alpha band (or, when the file declares none, the
  nodata the item or the sensor declares). Coverage is never guessed from the values.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.crs
import rasterio.errors
from rasterio.enums import ColorInterp, Interleaving, Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from msc_france.builder.pool import DatasetPool, active_pool
from msc_france.errors import SourceError, first_line
from msc_france.grid import PixelGrid
from msc_france.sources.signing import Signer

RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear, "cubic": Resampling.cubic,
              "average": Resampling.average}
#: Source data types the warper reads (complex and 64-bit integers are refused).
SUPPORTED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}
# Bounded HTTP retries inside GDAL (429 honours Retry-After), and explicit timeouts. HEAD stays on
# (GDAL's default): without it GDAL learns a remote file's size by starting a GET of the whole
# file and aborting it, 1.2-1.5x the bytes a chip needs (docs/benchmarks.md); a source whose signed
# URLs allow GET only sets ``gdal: {CPL_VSIL_CURL_USE_HEAD: "NO"}``.
GDAL_ENV = dict(
    GDAL_HTTP_MAX_RETRY=3, GDAL_HTTP_RETRY_DELAY=0.5, GDAL_HTTP_RETRY_CODES="429,500,502,503,504",
    GDAL_HTTP_TIMEOUT=30, GDAL_HTTP_CONNECTTIMEOUT=10,
    GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", CPL_VSIL_CURL_USE_HEAD="YES", GDAL_CACHEMAX=256,
    VSI_CACHE=True,
)

# GDAL's in-memory destination of every warp is georeferenced by dst_transform, yet its creation
# warns. The filter is installed once, here: ``warnings.catch_warnings`` around each call is not
# thread-safe (two build threads restored each other's filters and the warning reached stderr).
warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning,
                        module=r"rasterio(\.|$)")


@dataclass(frozen=True)
class Warped:
    """An asset on the chip grid: values (bands, H, W) and where the source covers it (H, W)."""

    values: np.ndarray
    covered: np.ndarray
    #: Per pixel, the fraction of its area inside the source's extent, when that is exact (same
    #: CRS, axis-aligned source, area averaging); None otherwise. Mosaics weigh tiles by it.
    fraction: np.ndarray | None = None


def axis_fractions(src_bounds: tuple[float, float, float, float], grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
    """(per row, per column) fractions of each grid row's height and column's width inside the
    rectangle ``src_bounds`` (same CRS).
    """
    left, bottom, right, top = src_bounds
    t = grid.transform
    xe = t.c + t.a * np.arange(grid.width + 1)
    ye = t.f + t.e * np.arange(grid.height + 1)  # top edges first, descending
    fx = np.clip(np.minimum(right, xe[1:]) - np.maximum(left, xe[:-1]), 0, None) / t.a
    fy = np.clip(np.minimum(top, ye[:-1]) - np.maximum(bottom, ye[1:]), 0, None) / -t.e
    return np.minimum(fy, 1.0), np.minimum(fx, 1.0)


def area_fraction(src_bounds: tuple[float, float, float, float], grid: PixelGrid) -> np.ndarray:
    """(H, W) fraction of each grid pixel's area inside the rectangle ``src_bounds`` (same CRS)."""
    fy, fx = axis_fractions(src_bounds, grid)
    return np.outer(fy, fx)


def gdal_env(source: dict[str, str] | None = None) -> dict[str, object]:
    """GDAL settings for reads: the build's, then the source's (``source.gdal``); any of them set in
    the environment wins (e.g. shorter timeouts in tests).
    """
    import os

    merged: dict[str, object] = {**GDAL_ENV, **(source or {})}
    return {k: os.environ.get(k, v) for k, v in merged.items()}


def clear_http_cache() -> None:
    """Forget GDAL's in-process /vsicurl cache (it remembers failed opens, so a retry in the same
    process would fail without asking the server again). Best effort: a no-op if GDAL's symbol
    cannot be found.
    """
    import ctypes
    import glob

    libs = glob.glob(str(Path(rasterio.__file__).parent.parent / "rasterio.libs" / "libgdal*.so*"))
    for lib in libs or ["libgdal.so"]:
        try:
            ctypes.CDLL(lib).VSICurlClearCache()
            return
        except (OSError, AttributeError):
            continue


def _is_403(e: Exception) -> bool:
    s = str(e)
    return "403" in s or "Forbidden" in s or "AuthenticationFailed" in s


def open_raster(href: str, signer: Signer,
                opener: Callable[[str], rasterio.io.DatasetReader] | None = None) -> rasterio.io.DatasetReader:
    """Open an asset (with ``opener``, default ``rasterio.open``; a task's pool passes its own),
    signing its href just now; on HTTP 403 re-sign once and retry.
    """
    open_ = opener or rasterio.open
    try:
        return open_(signer.sign(href))
    except rasterio.errors.RasterioError as e:
        if _is_403(e):
            try:
                return open_(signer.refresh(href))
            except rasterio.errors.RasterioError as e2:
                raise SourceError(f"cannot read {href}: {first_line(e2)}") from None
        raise SourceError(f"cannot read {href}: {first_line(e)}") from None


def check_proj(shape: tuple[int, int] | None, transform: tuple[float, ...] | None,
               src: rasterio.io.DatasetReader, href: str) -> None:
    """Refuse a file whose grid disagrees with its item's ``proj:shape`` / ``proj:transform``.

    A mismatch means the catalog describes another file (or another version of it): reading it
    anyway would put pixels at the wrong place or mix products silently.
    """
    if shape is not None and tuple(shape) != (src.height, src.width):
        raise SourceError(f"{href}: proj:shape {list(shape)} disagrees with the file ({src.height} x {src.width})")
    if transform is not None:
        have = list(src.transform)[:6]
        tol = 1e-6 * max(1.0, max(abs(v) for v in have))
        if any(abs(a - b) > max(tol, 1e-9) for a, b in zip(transform[:6], have, strict=True)):
            raise SourceError(f"{href}: proj:transform {list(transform[:6])} disagrees with the file {have}")


def overview_level(src: rasterio.io.DatasetReader, target_res: float) -> int | None:
    """The coarsest overview whose pixels are still no larger than ``target_res`` (None: full res)."""
    native = abs(src.transform.a)
    level = None
    for i, f in enumerate(src.overviews(1)):
        if native * f <= target_res * (1 + 1e-9):
            level = i
    return level


@dataclass(frozen=True)
class ReadLimits:
    """Bounds a source file must respect before any pixel is read (a source's ``max_bands`` and
    ``max_block_bytes``): a 98 KB file can declare 2,500 bands, a 2 MB one a single 24,576-pixel tile.
    """

    max_bands: int = 64
    max_block_bytes: int = 256 * 2**20

    def check(self, src: rasterio.io.DatasetReader, href: str) -> None:
        """Raise a SourceError naming the limit ``src`` exceeds."""
        if src.count > self.max_bands:
            raise SourceError(f"{href} declares {src.count} bands, more than the source's max_bands "
                              f"({self.max_bands})")
        # One block of a pixel-interleaved file (and of JPEG 2000) holds every band.
        per_block = src.count if src.interleaving != Interleaving.band else 1
        for (h, w), dtype in zip(src.block_shapes, src.dtypes, strict=True):
            nbytes = int(h) * int(w) * np.dtype(dtype).itemsize * per_block
            if nbytes > self.max_block_bytes:
                raise SourceError(f"{href}: one {h} x {w} block decodes to {nbytes} bytes, more than the "
                                  f"source's max_block_bytes ({self.max_block_bytes})")


def warp_asset(href: str, signer: Signer, grid: PixelGrid, indexes: tuple[int, ...], resampling: str,
               nodata: float | None, proj_shape: tuple[int, int] | None = None,
               proj_transform: tuple[float, ...] | None = None, limits: ReadLimits = ReadLimits()) -> Warped:
    """Warp bands ``indexes`` of an asset onto ``grid``.

    Args:
        href: unsigned href of the file.
        signer: signs the href just before the read.
        grid: the chip's pixel grid.
        indexes: 1-based band indexes.
        resampling: nearest, bilinear, cubic or average.
        nodata: nodata declared outside the file (item or sensor); the file's own wins.
        proj_shape: the item's ``proj:shape``, checked against the file.
        proj_transform: the item's ``proj:transform``, checked against the file.
        limits: bounds on the file's bands and blocks, checked before any pixel is read.

    Raises:
        SourceError: unreadable file, no CRS, a band it does not have, an unsupported data type,
            a grid that disagrees with the item, or a file beyond ``limits``.
    """
    pool = active_pool()
    if pool is None:
        with open_raster(href, signer) as src:
            return warp_open(src, href, grid, indexes, resampling, nodata, proj_shape, proj_transform, limits)
    src = open_raster(href, signer, pool.get)  # opened once per task, kept for its other chips
    try:
        return warp_open(src, href, grid, indexes, resampling, nodata, proj_shape, proj_transform, limits, pool)
    except SourceError:
        pool.drop(src.name)  # a broken transfer: the next try opens the file afresh
        raise


def warp_open(src: rasterio.io.DatasetReader, href: str, grid: PixelGrid, indexes: tuple[int, ...],
              resampling: str, nodata: float | None, proj_shape: tuple[int, int] | None = None,
              proj_transform: tuple[float, ...] | None = None, limits: ReadLimits = ReadLimits(),
              pool: DatasetPool | None = None) -> Warped:
    """:func:`warp_asset` of a dataset already open (a file, or a service's answer in memory); its
    overview levels are opened through ``pool`` when given.
    """
    limits.check(src, href)
    if src.crs is None:
        raise SourceError(f"{href} has no CRS")
    check_proj(proj_shape, proj_transform, src, href)
    if max(indexes) > src.count:
        raise SourceError(f"{href} has {src.count} band(s); band {max(indexes)} was asked for")
    dtypes = {src.dtypes[i - 1] for i in indexes}
    bad = dtypes - SUPPORTED_DTYPES
    if bad:
        raise SourceError(f"{href}: unsupported data type {sorted(bad)[0]}")
    # When area-averaging down to a coarser grid in the same CRS (aerial 0.2 m -> 1.5 m), start
    # from the file's overviews: fewer pixels to decode (JPEG / JPEG 2000 decoding dominates).
    if resampling == "average" and src.crs == rasterio.crs.CRS.from_user_input(grid.crs):
        level = overview_level(src, grid.res)
        if level is not None and pool is not None:
            return _warp(pool.get(src.name, level), href, grid, indexes, resampling, nodata, dtypes)
        if level is not None:
            with rasterio.open(src.name, OVERVIEW_LEVEL=level) as ov:
                return _warp(ov, href, grid, indexes, resampling, nodata, dtypes)
    return _warp(src, href, grid, indexes, resampling, nodata, dtypes)


def _warp(src: rasterio.io.DatasetReader, href: str, grid: PixelGrid, indexes: tuple[int, ...], resampling: str,
          nodata: float | None, dtypes: set[str]) -> Warped:
    wide = any(np.dtype(d).itemsize >= 4 and np.dtype(d).kind in "iu" or d == "float64" for d in dtypes)
    # rasterio warps bands 1..count when a destination alpha band is asked for (a band subset
    # would be silently replaced by the first bands): warp them all, then pick ``indexes``.
    out = np.zeros((src.count + 1, grid.height, grid.width), np.float64 if wide else np.float32)
    alpha = [i + 1 for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha]
    src_nodata = src.nodata if src.nodata is not None else (None if alpha or _has_mask(src) else nodata)
    # The fill rule, for every product: a pixel of a file is fill when all its bands equal the
    # nodata value (GDAL's warper default, UNIFIED_SRC_NODATA=PARTIAL with one value for all bands).
    # IGN fills with white in every band; 255 in one band only is a saturated pixel, which is data.
    extra = {} if resampling == "average" else {"XSCALE": 1, "YSCALE": 1}
    try:
        reproject(
            rasterio.band(src, list(range(1, src.count + 1))), out, src_nodata=src_nodata,
            src_alpha=alpha[0] if alpha else 0, dst_alpha=src.count + 1,
            dst_transform=grid.transform, dst_crs=grid.crs, resampling=RESAMPLING[resampling], **extra,
        )
    except rasterio.errors.RasterioError as e:  # truncated or corrupt file, broken connection
        raise SourceError(f"cannot read {href}: {first_line(e)}") from None
    covered = out[-1] > 0
    values = out[[i - 1 for i in indexes]]
    if values.dtype.kind == "f":
        covered &= np.all(np.isfinite(values), axis=0)  # NaN fill of float products
    fraction = None
    st = src.transform
    if (resampling == "average" and st.b == 0 and st.d == 0 and st.a > 0 and st.e < 0
            and src.crs == rasterio.crs.CRS.from_user_input(grid.crs)):
        # A pixel the source only partly overlaps (a tile's edge): GDAL's average there is not the
        # mean of the part it covers (measured: up to 20 DN off on real IGN patches), and it says
        # nothing of how large that part is. Both are computed here exactly, on the edge pixels only.
        fy, fx = axis_fractions(tuple(src.bounds), grid)
        fraction = np.outer(fy, fx)
        _exact_edges(src, grid, out, fy, fx, src_nodata)
        covered = out[-1] > 0
        values = out[[i - 1 for i in indexes]]
    return Warped(values, covered, fraction)


def _overlaps(dst_edges: np.ndarray, src_edges: np.ndarray) -> np.ndarray:
    """(n_dst, n_src) overlap lengths of 1-D cells given by ascending edges."""
    lo = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    return np.clip(hi - lo, 0, None)


def _exact_edges(src: rasterio.io.DatasetReader, grid: PixelGrid, out: np.ndarray, fy: np.ndarray, fx: np.ndarray,
                 nodata: float | None) -> None:
    """Overwrite the pixels of ``out`` (bands + alpha) that the source covers only in part with the
    exact area mean of the valid source pixels under them (per band: a band's nodata or mask
    excludes that band's value only).
    """
    def cut(f: np.ndarray) -> np.ndarray:
        return (f > 1e-9) & (f < 1 - 1e-9)

    rows, cols = np.flatnonzero(cut(fy)), np.flatnonzero(cut(fx))
    if not len(rows) and not len(cols):
        return
    g, t = grid.transform, src.transform
    # Rows top-down and columns left-right, as ascending coordinates (y negated).
    wx = _overlaps(g.c + g.a * np.arange(grid.width + 1), t.c + t.a * np.arange(src.width + 1))
    wy = _overlaps(-(g.f + g.e * np.arange(grid.height + 1)), -(t.f + t.e * np.arange(src.height + 1)))
    for axis, lines in ((0, rows), (1, cols)):
        for k in lines:
            line_w = wy[k] if axis == 0 else wx[k]  # the source rows (or columns) under this line
            cross = wx if axis == 0 else wy  # the other axis, every pixel of the line
            s = np.flatnonzero(line_w)
            c = np.flatnonzero(cross.any(axis=0))
            if not len(s) or not len(c):
                continue
            if axis == 0:
                win = Window(c[0], s[0], c[-1] - c[0] + 1, s[-1] - s[0] + 1)
            else:
                win = Window(s[0], c[0], s[-1] - s[0] + 1, c[-1] - c[0] + 1)
            data = src.read(window=win).astype(np.float64)
            if nodata is not None:  # the file's fill rule: all bands equal to nodata (see _warp)
                valid = np.broadcast_to(~np.all(data == nodata, axis=0), data.shape)
            else:
                valid = src.read_masks(window=win) > 0
            if axis == 1:  # (bands, rows, cols) -> (bands, cols, rows): the line's axis first
                data, valid = data.transpose(0, 2, 1), valid.transpose(0, 2, 1)
            ws = line_w[s[0] : s[-1] + 1]
            wc = cross[:, c[0] : c[-1] + 1]
            num = np.einsum("s,bsc,kc->bk", ws, data * valid, wc)
            den = np.einsum("s,bsc,kc->bk", ws, valid.astype(np.float64), wc)
            ok = den > 0
            vals = np.where(ok, num / np.where(ok, den, 1), 0)
            line = (slice(None), k, slice(None)) if axis == 0 else (slice(None), slice(None), k)
            target = out[line]  # (bands + 1, pixels of the line)
            edge = (fx if axis == 0 else fy) > 1e-9  # the line's pixels inside the source
            target[:-1, edge] = vals[:, edge]
            target[-1, edge] = np.where(ok.all(axis=0), 1.0, 0.0)[edge]


def _has_mask(src: rasterio.io.DatasetReader) -> bool:
    """Whether the file has an internal (per-dataset) mask GDAL honours while warping."""
    from rasterio.enums import MaskFlags

    return any(MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags for flags in src.mask_flag_enums)
