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
        """(DN + offset) / 10000 with the offset of the item's processing baseline."""
        baseline, source = processing_baseline(item)
        add = -1000.0 if baseline >= "04.00" else 0.0
        return 1e-4, add * 1e-4, f"s2 baseline {baseline} (from {source}): (DN {add:+g}) / 10000"

    def decode_mask(self, type: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SCL: class 0 -> nodata; saturated, shadow, clouds, cirrus -> not clear."""
        if type != "scl":
            return super().decode_mask(type, raw)
        return np.isin(raw, SCL_NODATA), np.isin(raw, SCL_NOT_CLEAR)
