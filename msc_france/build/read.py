"""Reading one chip of one sensor: windowed warp onto the chip grid, masks, harmonisation, mosaic.

Each item is warped with GDAL (through rasterio's WarpedVRT) straight onto the chip's explicit
Lambert-93 pixel grid: only the source blocks under the chip are read, and there is no
intermediate grid to misalign. Reflectance uses the sensor's resampling (bilinear for S2 and
Landsat at their native GSD, area-average for aerial downsampling); masks and labels use nearest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
import rasterio.crs
import rasterio.errors
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from msc_france.config import SensorSpec
from msc_france.errors import SourceError
from msc_france.grid import PixelGrid
from msc_france.sources.signing import Signer

RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear, "cubic": Resampling.cubic,
              "average": Resampling.average}
# SCL classes that are not clear ground: saturated, cloud shadow, cloud medium/high, cirrus.
SCL_NODATA = {0}
SCL_CLOUD = {1, 3, 8, 9, 10}
# qa_pixel bits: 0 fill; 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow.
QA_FILL = 1 << 0
QA_CLOUD = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4)
# Bounded HTTP retries inside GDAL (429 honours Retry-After), and explicit timeouts.
GDAL_ENV = dict(
    GDAL_HTTP_MAX_RETRY=3, GDAL_HTTP_RETRY_DELAY=0.5, GDAL_HTTP_RETRY_CODES="429,500,502,503,504",
    GDAL_HTTP_TIMEOUT=30, GDAL_HTTP_CONNECTTIMEOUT=10,
    GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", CPL_VSIL_CURL_USE_HEAD="NO", GDAL_CACHEMAX=256,
    VSI_CACHE=True,
)


def clear_http_cache() -> None:
    """Forget GDAL's in-process /vsicurl cache (it remembers failed opens, so a retry in the same
    process would fail without asking the server again). Best effort: a no-op if GDAL's symbol
    cannot be found."""
    import ctypes
    import glob

    libs = glob.glob(str(Path(rasterio.__file__).parent.parent / "rasterio.libs" / "libgdal*.so*"))
    for lib in libs or ["libgdal.so"]:
        try:
            ctypes.CDLL(lib).VSICurlClearCache()
            return
        except (OSError, AttributeError):
            continue


def gdal_env() -> dict[str, object]:
    """GDAL settings for reads; any of them set in the environment wins (e.g. shorter timeouts)."""
    import os

    return {k: os.environ.get(k, v) for k, v in GDAL_ENV.items()}


@dataclass
class ChipRead:
    """One sensor's pixels for one chip, ready to store."""

    data: np.ndarray  # (bands, H, W) stored dtype
    valid: np.ndarray  # (H, W) uint8
    item_ids: list[str]
    datetime: int  # seconds since epoch of the (first) acquisition
    harmonization: str
    covered_fraction: float
    cloud_fraction: float | None
    valid_fraction: float
    errors: list[str] = field(default_factory=list)

    def checksum(self) -> str:
        """sha256 of the stored bytes (image then mask)."""
        h = hashlib.sha256(np.ascontiguousarray(self.data).tobytes())
        h.update(np.ascontiguousarray(self.valid).tobytes())
        return h.hexdigest()

    def stats(self) -> dict[str, Any]:
        """Per-band sum, sum of squares and count over valid pixels (stored units)."""
        m = self.valid.astype(bool)
        vals = self.data[:, m].astype(np.float64)
        return {"sum": vals.sum(axis=1).tolist(), "sumsq": (vals**2).sum(axis=1).tolist(), "count": int(m.sum())}


def _is_403(e: Exception) -> bool:
    s = str(e)
    return "403" in s or "Forbidden" in s or "AuthenticationFailed" in s


def open_raster(href: str, signer: Signer) -> rasterio.io.DatasetReader:
    """Open an asset, signing its href just now; on HTTP 403 re-sign once and retry."""
    try:
        return rasterio.open(signer.sign(href))
    except rasterio.errors.RasterioError as e:
        if _is_403(e):
            try:
                return rasterio.open(signer.refresh(href))
            except rasterio.errors.RasterioError as e2:
                raise SourceError(f"cannot read {href}: {_first(e2)}") from None
        raise SourceError(f"cannot read {href}: {_first(e)}") from None


def _transient(e: Exception) -> bool:
    """Errors worth one more try after GDAL's own retries: timeouts and broken transfers."""
    s = str(e).lower()
    return any(k in s for k in ("timed out", "timeout", "connection", "transfer closed", "curl error", "http"))


def _first(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]


def check_proj(asset: dict[str, Any], src: rasterio.io.DatasetReader, href: str) -> None:
    """Refuse a file whose grid disagrees with its item's ``proj:shape`` / ``proj:transform``.

    A mismatch means the catalog describes another file (or another version of it): reading it
    anyway would put pixels at the wrong place or mix products silently.
    """
    shape = asset.get("proj:shape")
    if shape is not None and tuple(shape) != (src.height, src.width):
        raise SourceError(f"{href}: proj:shape {list(shape)} disagrees with the file ({src.height} x {src.width})")
    tr = asset.get("proj:transform")
    if tr is not None:
        have = list(src.transform)[:6]
        tol = 1e-6 * max(1.0, max(abs(v) for v in have))
        if any(abs(a - b) > max(tol, 1e-9) for a, b in zip(tr[:6], have, strict=True)):
            raise SourceError(f"{href}: proj:transform {list(tr[:6])} disagrees with the file {have}")


def _overview_level(src: rasterio.io.DatasetReader, target_res: float) -> int | None:
    """The coarsest overview whose pixels are still no larger than ``target_res`` (None: full res)."""
    native = abs(src.transform.a)
    level = None
    for i, f in enumerate(src.overviews(1)):
        if native * f <= target_res * (1 + 1e-9):
            level = i
    return level


def warp(href: str, signer: Signer, grid: PixelGrid, indexes: list[int], resampling: str,
         nodata: float | None, asset: dict[str, Any] | None = None) -> np.ndarray:
    """Read ``indexes`` of an asset warped onto ``grid``; pixels outside the source are ``nodata``.

    When area-averaging down to a coarser grid in the same CRS (aerial 0.2-0.5 m -> 1.5 m), the
    file's overviews are used down to the target resolution: the averaging then starts from fewer
    decoded pixels (JPEG / JPEG 2000 decoding dominates aerial reads).
    """
    with open_raster(href, signer) as src:
        if src.crs is None:
            raise SourceError(f"{href} has no CRS")
        if asset is not None:
            check_proj(asset, src, href)
        if resampling == "average" and src.crs == rasterio.crs.CRS.from_user_input(grid.crs):
            level = _overview_level(src, grid.res)
            if level is not None:
                with rasterio.open(src.name, OVERVIEW_LEVEL=level) as ov:
                    return _warp_from(ov, href, grid, indexes, resampling, nodata)
        return _warp_from(src, href, grid, indexes, resampling, nodata)


def _warp_from(src: rasterio.io.DatasetReader, href: str, grid: PixelGrid, indexes: list[int], resampling: str,
               nodata: float | None) -> np.ndarray:
    if max(indexes) > src.count:
        raise SourceError(f"{href} has {src.count} band(s); band {max(indexes)} was asked for")
    nd = src.nodata if src.nodata is not None else nodata
    try:
        with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                       resampling=RESAMPLING[resampling], src_nodata=nd, nodata=nd) as vrt:
            return vrt.read(indexes)
    except rasterio.errors.RasterioError as e:  # truncated or corrupt file, broken connection
        raise SourceError(f"cannot read {href}: {_first(e)}") from None


def _harmonise(dn: np.ndarray, spec: SensorSpec, item: dict[str, Any], asset: dict[str, Any]) -> tuple[np.ndarray, str]:
    """DN -> surface reflectance (float32) and a description of what was applied."""
    if spec.harmonization == "s2-baseline":
        baseline = str(item["properties"].get("s2:processing_baseline", "00.00"))
        offset = -1000.0 if baseline >= "04.00" else 0.0
        return (dn.astype(np.float32) + offset) / 10000.0, f"s2 baseline {baseline}: (DN {offset:+g}) / 10000"
    if spec.harmonization == "raster-scale-offset":
        rb = (asset.get("raster:bands") or [{}])[0]
        if "scale" not in rb or "offset" not in rb:
            raise SourceError(f"item {item['id']} asset lacks raster:bands scale/offset")
        scale, offset = float(rb["scale"]), float(rb["offset"])
        return dn.astype(np.float32) * scale + offset, f"DN * {scale:g} {offset:+g}"
    return dn.astype(np.float32), "none"


def _mask(spec: SensorSpec, item: dict[str, Any], grid: PixelGrid, signer: Signer) -> tuple[np.ndarray, np.ndarray] | None:
    """(nodata, cloud) boolean masks from the sensor's quality asset, or None when it has none."""
    if spec.mask is None:
        return None
    asset = item["assets"].get(spec.mask.asset)
    if asset is None:
        raise SourceError(f"item {item['id']} has no '{spec.mask.asset}' asset")
    if spec.mask.type == "scl":
        scl = warp(asset["href"], signer, grid, [1], "nearest", 0, asset)[0]
        return np.isin(scl, list(SCL_NODATA)), np.isin(scl, list(SCL_CLOUD))
    qa = warp(asset["href"], signer, grid, [1], "nearest", 1, asset)[0].astype(np.uint16)
    return (qa & QA_FILL) > 0, (qa & QA_CLOUD) > 0


def read_item(spec: SensorSpec, item: dict[str, Any], grid: PixelGrid, signer: Signer) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One item on the chip grid: (stored values (B,H,W), covered (H,W), clear (H,W), harmonisation)."""
    nb = len(spec.bands)
    out = np.zeros((nb, grid.height, grid.width), np.float32)
    covered = np.ones(grid.shape, bool)
    harm = "none"
    by_asset: dict[str, list[tuple[int, int]]] = {}
    for b, band in enumerate(spec.bands):
        by_asset.setdefault(band.asset, []).append((b, band.index))
    for key, members in by_asset.items():
        asset = item["assets"].get(key)
        if asset is None:
            raise SourceError(f"item {item['id']} has no '{key}' asset")
        dn = warp(asset["href"], signer, grid, [i for _, i in members], spec.resampling, spec.nodata, asset)
        covered &= np.all(dn != spec.nodata, axis=0)
        vals, harm = _harmonise(dn, spec, item, asset)
        for (b, _), v in zip(members, vals, strict=True):
            out[b] = v
    if spec.dtype == "uint16" and spec.harmonization != "none":
        stored = np.clip(np.round(out * 10000.0), 1, 65535)  # reflectance x 10000; 0 stays nodata
    else:
        stored = np.clip(np.round(out), 0, np.iinfo(spec.dtype).max)
    stored = np.where(covered, stored, 0).astype(spec.dtype)
    masks = _mask(spec, item, grid, signer)
    clear = np.ones(grid.shape, bool)
    if masks is not None:
        nodata, cloud = masks
        covered &= ~nodata
        clear = ~cloud
    if spec.kind == "labels":
        covered &= stored[0] != 0
    return stored, covered, clear, harm


def read_candidate(spec: SensorSpec, items: list[dict[str, Any]], grid: PixelGrid, signer: Signer) -> ChipRead:
    """Mosaic the items of one acquisition onto the chip grid (first item wins where they overlap)."""
    nb = len(spec.bands)
    data = np.zeros((nb, grid.height, grid.width), spec.dtype)
    filled = np.zeros(grid.shape, bool)
    clear_all = np.zeros(grid.shape, bool)
    harms: list[str] = []
    used: list[dict[str, Any]] = []
    for item in items:
        if filled.all():
            break
        try:
            stored, covered, clear, harm = read_item(spec, item, grid, signer)
        except SourceError as e:
            if not _transient(e):
                raise
            clear_http_cache()
            stored, covered, clear, harm = read_item(spec, item, grid, signer)  # one more try
        take = covered & ~filled
        data[:, take] = stored[:, take]
        clear_all[take] = clear[take]
        filled |= take
        if take.any():
            used.append(item)
        if harm not in harms:
            harms.append(harm)
    valid = (filled & clear_all).astype(np.uint8)
    n_filled = int(filled.sum())
    cloud = float((filled & ~clear_all).sum() / n_filled) if n_filled and spec.mask is not None else None
    first = (used or items)[0]["properties"]
    when = first.get("datetime") or first.get("start_datetime")
    ts = int(dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()) if when else 0
    return ChipRead(
        data=data, valid=valid, item_ids=[it["id"] for it in used], datetime=ts,
        harmonization="; ".join(harms), covered_fraction=n_filled / filled.size,
        cloud_fraction=cloud, valid_fraction=float(valid.mean()),
    )
