"""Sentinel-2 Level-2A from ESA (Planetary Computer ``sentinel-2-l2a``, SAFE products ingested).

Reflectance = (DN + BOA_ADD_OFFSET) / 10000, where the offset is -1000 from processing baseline
04.00 on (products from 2022-01-25, and reprocessed archives). The baseline is read from, in
order: ``s2:processing_baseline``; the product id (``_N0400_`` in the item id or in
``s2:product_uri``); the acquisition date. ``harmonization`` records which one decided.
SCL classes: 0 no data; 1 saturated/defective, 3 cloud shadow, 8/9 cloud, 10 cirrus are not
clear ground; 2 dark area, 4 vegetation, 5 bare, 6 water, 7 unclassified, 11 snow are.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from msc_france.products.base import ProductRules, item_datetime

if TYPE_CHECKING:
    from msc_france.config import SensorSpec

SCL_NODATA = (0,)
SCL_NOT_CLEAR = (1, 3, 8, 9, 10)
#: First day of products processed with baseline 04.00 (BOA_ADD_OFFSET introduced).
BASELINE_0400_FROM = dt.date(2022, 1, 25)
_PRODUCT_BASELINE = re.compile(r"_N(\d{2})(\d{2})_")
_TILE = re.compile(r"_T?(\d{2}[C-X][A-Z]{2})_")
#: Earth Search's flag: the COGs' values already include BOA_ADD_OFFSET.
OFFSET_APPLIED = "earthsearch:boa_offset_applied"


def mgrs_tile(item: dict[str, Any]) -> str:
    """The item's MGRS tile ("31TCJ"), from whichever property its provider states, else its id."""
    props = item.get("properties", {})
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"]).upper().removeprefix("T")
    if str(props.get("grid:code", "")).upper().startswith("MGRS-"):
        return str(props["grid:code"])[5:].upper()
    parts = [props.get(k) for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")]
    if all(p is not None for p in parts):
        return f"{int(parts[0]):02d}{parts[1]}{parts[2]}".upper()
    m = _TILE.search(str(item.get("id", "")) + "_")
    return m[1] if m else ""


def processing_baseline(item: dict[str, Any]) -> tuple[str, str]:
    """(baseline "NN.NN", where it came from) for an S2 L2A item."""
    props = item.get("properties", {})
    b = props.get("s2:processing_baseline")
    if b:
        return str(b), "s2:processing_baseline"
    for where, text in (("product id", str(item.get("id", ""))), ("s2:product_uri", str(props.get("s2:product_uri", "")))):
        m = _PRODUCT_BASELINE.search(text)
        if m:
            return f"{m[1]}.{m[2]}", where
    when = item_datetime(item)
    if when is not None:
        return ("04.00" if when.date() >= BASELINE_0400_FROM else "02.14"), "acquisition date"
    return "00.00", "unknown (no offset)"


class Sentinel2L2A(ProductRules):
    """Sentinel-2 L2A rules: baseline offset and SCL classes."""

    name: ClassVar[str] = "sentinel-2-l2a"
    mask_types: ClassVar[tuple[str, ...]] = ("scl",)

    def radiometry(self, spec: SensorSpec, item: dict[str, Any], key: str,
                   asset: dict[str, Any], index: int) -> tuple[float, float, str]:
        """(DN + offset) / 10000 with the offset of the item's processing baseline, unless the
        provider says its files already have it applied (Earth Search's ``earthsearch:boa_offset_applied``:
        its COG values are ESA's DN - 1000). ``raster:bands`` offsets are not read: Earth Search states
        -0.1 on every item, flagged or not, so they cannot decide.
        """
        baseline, source = processing_baseline(item)
        add = -1000.0 if baseline >= "04.00" else 0.0
        if add and item.get("properties", {}).get(OFFSET_APPLIED) is True:
            return 1e-4, 0.0, (f"s2 baseline {baseline} (from {source}), offset already applied by the provider "
                               f"({OFFSET_APPLIED}): DN / 10000")
        return 1e-4, add * 1e-4, f"s2 baseline {baseline} (from {source}): (DN {add:+g}) / 10000"

    def scene_key(self, item: dict[str, Any]) -> str:
        """Platform, MGRS tile and acquisition day (one satellite sees a tile at most once a day): one
        acquisition whatever the provider's id (Planetary Computer's ``S2A_MSIL2A_..._T31TCJ_...``,
        Earth Search's ``S2A_31TCJ_..._L2A``) or its reprocessing (Earth Search's collection 1).
        """
        props = item.get("properties", {})
        when, tile = item_datetime(item), mgrs_tile(item)
        if not tile or when is None:
            return super().scene_key(item)
        return f"s2|{str(props.get('platform', '')).lower()}|{tile}|{when.date().isoformat()}"

    def decode_mask(self, type: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SCL: class 0 -> nodata; saturated, shadow, clouds, cirrus -> not clear."""
        if type != "scl":
            return super().decode_mask(type, raw)
        return np.isin(raw, SCL_NODATA), np.isin(raw, SCL_NOT_CLEAR)
