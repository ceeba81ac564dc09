"""Consolidation: the done marks folded into per-chip metadata, statistics, the chip index and
Zarr's consolidated metadata (run at the end of every build, and safe to run again).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import zarr

from msc_france.crs import L93, WGS84, reproject_geometry
from msc_france.grid import Chip
from msc_france.splits import ALL_SPLITS
from msc_france.store import stac
from msc_france.store.chip_index import CLASS_FRACTION, field_column
from msc_france.store.meta import BandStats, ConsolidateSummary, LayerSummary
from msc_france.store.records import Commits, Status
from msc_france.store.schema import Layer, reference_layer

if TYPE_CHECKING:
    from msc_france.store.core import Store

def _fold_layer(store: Store, L: Layer, ids: list[str], splits: list[str], commits: Commits) -> dict[str, Any]:
    """Write one group's per-chip metadata arrays and statistics; return its columns and counts.

    The normalisation statistics come from training chips only (held-out pixels must not shape
    what a model sees); a store without a usable training chip falls back to every chip, and says
    so in the statistics' ``over``.
    """
    g = store.root[L.group]
    n = len(ids)
    status = np.zeros(n, np.uint8)
    when = np.zeros(n, np.int64)
    items = np.full(n, "", dtype=object)
    cloud = np.full(n, np.nan, np.float32)
    valid = np.full(n, np.nan, np.float32)
    harm = np.full(n, "", dtype=object)
    coreg = {k: np.full(n, np.nan) for k in ("shift_x_m", "shift_y_m", "coreg_quality")}
    scene_cc = np.full(n, np.nan)
    origin = {k: np.full(n, None, dtype=object) for k in ("provider", "date_rule")}
    nb = 1 if L.is_label else len(L.bands)
    # Sums, sums of squares and counts of valid pixels; row 1: training chips, row 0: the others.
    s1, s2, cnt = np.zeros((2, nb)), np.zeros((2, nb)), np.zeros(2)
    for i, cid in enumerate(ids):
        chip = commits.get(cid)
        rec = chip.layers.get(L.group) if chip is not None else None
        if rec is None:
            continue
        status[i] = rec.status.code
        when[i] = rec.datetime or 0
        items[i] = ",".join(rec.item_ids)
        cloud[i] = np.nan if rec.cloud_fraction is None else rec.cloud_fraction
        valid[i] = np.nan if rec.valid_fraction is None else rec.valid_fraction
        harm[i] = rec.harmonization
        scene_cc[i] = np.nan if rec.scene_cloud_cover is None else rec.scene_cloud_cover
        for k, arr in coreg.items():
            v = getattr(rec, k)
            arr[i] = np.nan if v is None else v
        for k, arr in origin.items():
            arr[i] = getattr(rec, k)
        st = rec.stats
        if st and rec.status is Status.OK:
            t = int(splits[i] == "train")
            s1[t] += st["sum"]
            s2[t] += st["sumsq"]
            cnt[t] += st["count"]
    for name, arr in (("status", status), ("datetime", when), ("cloud_fraction", cloud), ("valid_fraction", valid)):
        g[name][:] = arr
    g["item_ids"][:] = items.astype(str)
    g["harmonization"][:] = harm.astype(str)
    counts = {k.value: int((status == k.code).sum()) for k in Status}
    stats = _band_stats(s1, s2, cnt, str(g.attrs["units"]))
    if stats is not None:
        g.attrs["stats"] = stats.to_json()
    columns = _columns(L, status, valid, cloud, scene_cc, when, items, coreg, origin)
    if L.is_label:
        columns.update(_class_fractions(L, ids, splits, commits, g))
    return {"counts": counts, "stats": stats, "columns": columns}


def _columns(L: Layer, status: np.ndarray, valid: np.ndarray, cloud: np.ndarray, scene_cc: np.ndarray,
             when: np.ndarray, items: np.ndarray, coreg: dict[str, np.ndarray],
             origin: dict[str, np.ndarray]) -> dict[str, Any]:
    """One group's columns of the chip index."""
    col = functools.partial(field_column, group=L.group)  # the one home of the column naming
    columns = {
        col("status"): pd.Categorical([Status.from_code(int(v)).value for v in status],
                                      categories=[k.value for k in Status]),
        col("valid_fraction"): valid.astype(np.float64),
        col("cloud_fraction"): cloud.astype(np.float64),
        col("scene_cloud_cover"): scene_cc,
        col("datetime"): pd.to_datetime(pd.Series(when, dtype="float64").where(when > 0), unit="s", utc=True),
        col("item_ids"): [s.split(",") if s else [] for s in items],
    }
    if np.isfinite(coreg["coreg_quality"]).any():  # measured against the reference (builder/coreg.py)
        columns.update({col(k): v for k, v in coreg.items()})
    for k, arr in origin.items():  # only where a sensor has several providers or dated sources
        if any(v is not None for v in arr):
            columns[col(k)] = arr
    return columns


def _band_stats(s1: np.ndarray, s2: np.ndarray, cnt: np.ndarray, units: str) -> BandStats | None:
    """Per-band mean and std from sums, sums of squares and counts (row 1: training chips, row 0:
    the others): over training chips, or every chip when no training chip has data (said in ``over``).
    """
    over = "valid pixels of training chips with status ok"
    rows = slice(1, 2)
    if cnt[1] == 0:
        rows = slice(0, 2)
        over = "valid pixels of chips with status ok (the store has no training chip with data)"
    n_px = float(cnt[rows].sum())
    if n_px <= 0:
        return None
    mean = s1[rows].sum(0) / n_px
    std = np.sqrt(np.maximum(s2[rows].sum(0) / n_px - mean**2, 0))
    return BandStats(tuple(mean.round(4).tolist()), tuple(std.round(4).tolist()), int(n_px), units, over)


def _class_fractions(L: Layer, ids: list[str], splits: list[str], commits: Commits, g: Any) -> dict[str, Any]:
    """``class_fraction_<code>``: each chip's share of valid label pixels per class (NaN where the
    chip has no label data), for every class the store holds; the labels group's ``class_counts``
    attribute gets the pixel counts per class over the chips with labels, per split.
    """
    per_chip: list[dict[str, int] | None] = []
    for cid in ids:
        chip = commits.get(cid)
        rec = chip.layers.get(L.group) if chip is not None else None
        per_chip.append(dict(rec.class_counts) if rec is not None and rec.status.written and rec.class_counts
                        else None)
    codes = sorted({c for d in per_chip if d for c in d}, key=int)
    by_split: dict[str, dict[str, int]] = {}
    out: dict[str, Any] = {}
    totals = [sum(d.values()) if d else 0 for d in per_chip]
    for code in codes:
        col = np.full(len(ids), np.nan)
        for i, d in enumerate(per_chip):
            if d:
                col[i] = d.get(code, 0) / totals[i]
                by_split.setdefault(splits[i], {}).setdefault(code, 0)
                by_split[splits[i]][code] += d.get(code, 0)
        out[f"{CLASS_FRACTION}{code}"] = col
    g.attrs["class_counts"] = {sp: dict(sorted(v.items(), key=lambda kv: int(kv[0]))) for sp, v in
                               sorted(by_split.items())}
    return out


def _days_from_reference(store: Store, table: dict[str, Any]) -> dict[str, Any]:
    """``days_from_reference_<group>``: days between each sensor's acquisition and the reference
    sensor's (the co-registration reference: the recipe's, else the finest sensor), per chip.
    """
    chosen = (store.meta.recipe.get("coregistration") or {}).get("reference")
    ref = reference_layer(store.layers, chosen)
    if ref is None:
        return {}
    sensors = [L for L in store.layers if not L.is_label]
    t_ref = pd.Series(table[field_column("datetime", ref.group)])
    out = {}
    for L in sensors:
        if L.group != ref.group:
            dt_days = (pd.Series(table[field_column("datetime", L.group)]) - t_ref).dt.total_seconds() / 86400
            out[field_column("days_from_reference", L.group)] = dt_days.abs().round(3).to_numpy(dtype=np.float64)
    return out


def consolidate(store: Store) -> ConsolidateSummary:
    """Fold the done marks into per-chip metadata, statistics, ``index.parquet``, ``failures.json``
    and Zarr's consolidated metadata.

    Returns:
        A summary with per-layer status counts and whether the store is complete.
    """
    import geopandas as gpd
    from shapely.geometry import box

    commits = store.read_commits(tolerant=True)
    ids = store.chip_ids()
    n = len(ids)
    layers: dict[str, LayerSummary] = {}
    complete = n > 0
    table: dict[str, Any] = {"chip_id": ids, "chip_index": np.arange(n, dtype=np.int64)}
    regions = store.chip_regions()
    table["region"] = [",".join(regions.get(c, [])) for c in ids]
    splits = [str(x) for x in store.root["split"][:n]] if n else []
    table["split"] = pd.Categorical(splits, categories=list(ALL_SPLITS))
    geoms = [box(*Chip.from_id(c).bounds) for c in ids]
    wgs = [reproject_geometry(g, L93, WGS84).bounds for g in geoms]
    for j, name in enumerate(("lon_min", "lat_min", "lon_max", "lat_max")):
        table[name] = [b[j] for b in wgs]
    for L in store.layers:
        folded = _fold_layer(store, L, ids, splits, commits)
        layers[L.group] = LayerSummary(folded["counts"], folded["stats"])
        complete = complete and folded["counts"]["pending"] == 0 and folded["counts"]["failed"] == 0
        table.update(folded["columns"])
    table.update(_days_from_reference(store, table))
    failures = [
        {"chip_id": cid, "group": g, "status": rec.status.value, "reason": rec.reason or "",
         "item_ids": list(rec.item_ids)}
        for cid in ids if cid in commits for g, rec in sorted(commits[cid].layers.items())
        if rec.status.reported
    ]
    store.write_bytes_atomic("failures.json", json.dumps({"n": len(failures), "chips": failures}).encode())
    gdf = gpd.GeoDataFrame(table, geometry=geoms, crs=L93)
    buf = io.BytesIO()
    gdf.to_parquet(buf, write_covering_bbox=True)
    store.write_bytes_atomic("index.parquet", buf.getvalue())
    stac.write(store, gdf)
    store.write_meta(store.meta.but(n_chips=n, complete=bool(complete),
                                    consolidated=dt.datetime.now(dt.UTC).isoformat(timespec="seconds")))
    # Last: readers (xarray, zarr) open from this one document, without listing the side files.
    with warnings.catch_warnings():  # zarr's notes on our side files and on the v3 extension
        warnings.filterwarnings("ignore", category=UserWarning, module=r"zarr\.")
        zarr.consolidate_metadata(store.root.store, zarr_format=3)
    return ConsolidateSummary(n, layers, bool(complete))
