"""Reading one chip of one sensor: warp each asset, apply the product's masks, pack, mosaic.

Each item arrives as a frozen :class:`~msc_france.products.SourceItem` (parsed once from STAC by
its product rules). Its assets are warped onto the chip's explicit Lambert-93 grid
(:mod:`msc_france.builder.warp`), converted to physical values with the scale and offset the item
declares, packed into the store's declared encoding (``physical = stored * scale + offset``),
and masked with the product's quality masks. Values outside the store's valid range are clipped
and counted, or refused, as the sensor declares: nothing is ever cast silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio

from msc_france.builder.warp import ReadLimits, clear_http_cache, gdal_env, warp_asset, warp_open
from msc_france.config import SensorSpec, SourceSpec
from msc_france.errors import SourceError
from msc_france.grid import PixelGrid
from msc_france.products import SourceItem, rules_for
from msc_france.sources.signing import Signer, make_signer
from msc_france.sources.wms import get_map, request_gsd
from msc_france.store.schema import chip_checksum


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
    clipped: int = 0  # covered pixel values outside the valid range, clipped
    errors: list[str] = field(default_factory=list)
    providers: str | None = None  # the providers that served the items used (None: the sensor's first)
    date_rule: str | None = None  # how the acquisition's date was known, when a source decided it

    def checksum(self) -> str:
        """sha256 of the stored bytes (image then mask), as ``validate`` checks it."""
        return chip_checksum(self.data, self.valid)

    def stats(self) -> dict[str, Any]:
        """Per-band sum, sum of squares and count over valid pixels (stored units)."""
        m = self.valid.astype(bool)
        vals = self.data[:, m].astype(np.float64)
        return {"sum": vals.sum(axis=1).tolist(), "sumsq": (vals**2).sum(axis=1).tolist(), "count": int(m.sum())}

    def class_counts(self) -> dict[str, int]:
        """A label chip's valid pixels per class code (codes as strings, the JSON keys)."""
        codes = self.data[0][self.valid.astype(bool)].astype(np.int64)
        counts = np.bincount(codes)
        return {str(c): int(n) for c, n in enumerate(counts) if n}


@dataclass(frozen=True)
class ItemRead:
    """One item on the chip grid, packed: stored values, where covered, where clear."""

    stored: np.ndarray
    covered: np.ndarray
    clear: np.ndarray
    clipped: np.ndarray  # (H, W) number of band values clipped at each pixel
    fraction: np.ndarray | None = None  # (H, W) area fraction inside the item, when exact (see Warped)


def _transient(e: Exception) -> bool:
    """Errors worth one more try after GDAL's own retries: timeouts and broken transfers."""
    s = str(e).lower()
    return any(k in s for k in ("timed out", "timeout", "connection", "transfer closed", "curl error", "http"))


def stored_units(values: np.ndarray, scale: float, offset: float, spec: SensorSpec) -> np.ndarray:
    """Source values (physical = value * scale + offset) in the store's units, rounded.

    When the two encodings differ by a whole number of steps (the same scale: aerial DN, Sentinel-2
    DN with its -1000 offset) this is one float32 addition, with no float64 round trip through
    physical units; otherwise ``rint((value * scale + offset - store offset) / store scale)``.
    """
    mult = scale / spec.scale
    add = (offset - spec.offset) / spec.scale
    if abs(mult - 1) < 1e-9 and abs(add - round(add)) < 1e-6:
        out = values.astype(np.float32, copy=True)
        if round(add):
            out += np.float32(round(add))
        return np.rint(out, out=out)
    return np.rint((values * scale + offset - spec.offset) / spec.scale)


def pack(spec: SensorSpec, q: np.ndarray, covered: np.ndarray, item_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Values in store units (:func:`stored_units`) -> the store's declared encoding; (stored array,
    values clipped per pixel).

    Fill (not covered) is stored as 0. Raises SourceError when the sensor refuses out-of-range
    values (``out_of_range: error``).
    """
    lo, hi = spec.stored_range
    out = covered[None] & ((q < lo) | (q > hi))
    n = int(out.sum())
    per_pixel = out.sum(axis=0, dtype=np.int32)
    if n and spec.out_of_range == "error":
        lo_v, hi_v = lo * spec.scale + spec.offset, hi * spec.scale + spec.offset
        raise SourceError(f"item {item_id}: {n} value(s) outside the declared range [{lo_v:g}, {hi_v:g}] of {spec.name}")
    np.clip(q, lo, hi, out=q)
    q[:, ~covered] = 0
    return q.astype(spec.dtype), per_pixel


def read_item(spec: SensorSpec, item: SourceItem, grid: PixelGrid, signer: Signer | None = None) -> ItemRead:
    """One item on the chip grid (see module docstring), read with its provider's rules: its
    signing (unless ``signer`` is given), GDAL settings and bounds; a WMS provider's layers are
    requested for the chip's bounds (:func:`msc_france.sources.wms.get_map`).
    """
    src = spec.provider(item.provider)
    signer = signer or make_signer(src.signing)
    env = rasterio.Env(**gdal_env(src.gdal)) if src.gdal != spec.source.gdal else contextlib.nullcontext()
    with env:
        return _read_item(spec, src, item, grid, signer)


def _read_item(spec: SensorSpec, src: SourceSpec, item: SourceItem, grid: PixelGrid, signer: Signer) -> ItemRead:
    q: np.ndarray | None = None
    limits = ReadLimits(src.max_bands, src.max_block_bytes)
    covered = np.ones(grid.shape, bool)
    fraction: np.ndarray | None = None
    for a in item.assets:
        if src.type == "wms":
            assert src.wms is not None
            with get_map(a.href, grid.bounds, request_gsd(src.wms, grid.res, spec.native_gsd), src, max(a.indexes)) as ds:
                w = warp_open(ds, a.href, grid, a.indexes, spec.resampling, a.nodata, None, None, limits)
        else:
            w = warp_asset(a.href, signer, grid, a.indexes, spec.resampling, a.nodata, a.proj_shape,
                           a.proj_transform, limits)
        covered &= w.covered
        if w.fraction is not None:
            fraction = w.fraction if fraction is None else np.minimum(fraction, w.fraction)
        part = stored_units(w.values, a.scale, a.offset, spec)
        if q is None:
            q = np.zeros((len(spec.bands), grid.height, grid.width), part.dtype)
        elif part.dtype != q.dtype:
            q = q.astype(np.float64)
        q[list(a.targets)] = part
    assert q is not None  # an item has at least one asset (products refuse others)
    clear = np.ones(grid.shape, bool)
    rules = rules_for(item.product)
    for m in item.masks:
        w = warp_asset(m.href, signer, grid, (1,), "nearest", m.nodata, m.proj_shape, m.proj_transform, limits)
        nodata, not_clear = rules.decode_mask(m.type, w.values[0])
        covered &= w.covered & ~nodata
        clear &= ~not_clear
    stored, clipped = pack(spec, q, covered, item.id)
    if spec.kind == "labels":
        covered &= stored[0] != 0  # class 0 is "no data" in label products
    return ItemRead(stored, covered, clear, clipped, fraction)


def read_served(spec: SensorSpec, item: SourceItem, grid: PixelGrid,
                signer: Signer | None = None) -> tuple[SourceItem, ItemRead]:
    """``item`` read from the first provider that can serve it: its own, then the same scene from
    the next providers (``item.alternates``) when its files cannot be read; (the copy read, pixels).
    A transient failure is tried once more before moving on.

    Raises:
        SourceError: no provider could serve it (the first provider's reason, then the others').
    """
    errors: list[str] = []
    for copy in (item, *item.alternates):
        try:
            try:
                return copy, read_item(spec, copy, grid, signer if copy is item else None)
            except SourceError as e:
                if not _transient(e):
                    raise
                clear_http_cache()
                return copy, read_item(spec, copy, grid, signer if copy is item else None)  # one more try
        except SourceError as e:
            errors.append(str(e) if copy is item else f"{copy.provider}: {e}")
    raise SourceError("; then ".join(errors)[:600])


def read_candidate(spec: SensorSpec, items: list[SourceItem], grid: PixelGrid,
                   signer: Signer | None = None) -> ChipRead:
    """Mosaic the items of one acquisition onto the chip grid.

    Where an item covers a pixel whole, the first such item wins (overlapping tiles of one
    acquisition show the same ground). Where tiles meet inside a pixel (the seam between two
    aerial tiles), each covers part of it: the pixel is the mean of their values weighted by the
    area each covers, which is the area average of every source pixel under it (the warp
    averages within each tile; the weights are exact when the tiles are in the chip's CRS, see
    :func:`msc_france.builder.warp.area_fraction`). A pixel is clear when every tile in it is.
    """
    nb = len(spec.bands)
    acc = np.zeros((nb, grid.height, grid.width), np.float64)
    weight = np.zeros(grid.shape, np.float64)
    done = np.zeros(grid.shape, bool)  # pixels whose area is accounted for
    clear_all = np.ones(grid.shape, bool)
    harms: list[str] = []
    used: list[SourceItem] = []
    clipped = 0
    for listed in items:
        if done.all():
            break
        item, r = read_served(spec, listed, grid, signer)
        if used and item.provider not in {u.provider for u in used}:
            _check_agreement(spec, used, item, r, acc, weight, done)
        take = r.covered & ~done
        f = np.minimum(1.0 if r.fraction is None else r.fraction, 1.0 - weight)
        w = np.where(take, np.where(f > 1e-9, f, 0.0), 0.0)
        take &= w > 0
        acc[:, take] += w[take] * r.stored[:, take]
        weight += w
        clear_all[take] &= r.clear[take]
        done |= take & (weight >= 1 - 1e-6)
        if take.any():
            used.append(item)
            clipped += int(r.clipped[take].sum())
        if item.harmonization not in harms:
            harms.append(item.harmonization)
    filled = weight > 0
    data = np.zeros((nb, grid.height, grid.width), spec.dtype)
    mean = acc[:, filled] / weight[filled]
    data[:, filled] = (np.rint(mean) if np.issubdtype(np.dtype(spec.dtype), np.integer) else mean).astype(spec.dtype)
    clear_all &= filled
    valid = (filled & clear_all).astype(np.uint8)
    n_filled = int(filled.sum())
    cloud = float((filled & ~clear_all).sum() / n_filled) if n_filled and spec.masks else None
    first = (used or items)[0]
    return ChipRead(
        data=data, valid=valid, item_ids=[it.id for it in used], datetime=first.datetime,
        harmonization="; ".join(harms), covered_fraction=n_filled / filled.size,
        cloud_fraction=cloud, valid_fraction=float(valid.mean()), clipped=clipped,
        providers=_joined(it.provider for it in used), date_rule=_joined(it.date_rule for it in used),
    )


#: Mean |difference| (stored units) allowed where two providers' items of one acquisition overlap.
PROVIDER_TOLERANCE = 1.0


def _check_agreement(spec: SensorSpec, used: list[SourceItem], item: SourceItem, r: ItemRead, acc: np.ndarray,
                     weight: np.ndarray, done: np.ndarray) -> None:
    """An acquisition mosaicked from two providers (a tile each: the first provider lacked one):
    where their tiles overlap, the values must agree within :data:`PROVIDER_TOLERANCE`, else the two
    encode the scene differently (an offset applied by one and not declared) and the chip is refused.

    Raises:
        SourceError: naming both items, their providers and the difference.
    """
    both = r.covered & done
    if both.sum() < 16:  # tiles that only touch: nothing to compare
        return
    mosaic = acc[:, both] / weight[both]
    diff = float(np.abs(r.stored[:, both].astype(np.float64) - mosaic).mean())
    if diff > PROVIDER_TOLERANCE:
        first = used[0]
        raise SourceError(f"{spec.name}: items {first.id} ({first.provider}) and {item.id} ({item.provider}) of one "
                          f"acquisition differ by {diff:.1f} on average where they overlap ({int(both.sum())} pixels): "
                          "refused, the providers encode the scene differently")


def _joined(values: Iterable[str | None]) -> str | None:
    """Distinct non-empty values in order, comma-separated (None when there is none)."""
    out = list(dict.fromkeys(v for v in values if v))
    return ",".join(out) or None


__all__ = ["ChipRead", "ItemRead", "pack", "read_candidate", "read_item", "read_served"]
