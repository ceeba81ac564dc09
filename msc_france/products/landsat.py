"""Landsat Collection 2 Level-2 surface reflectance (USGS; Planetary Computer ``landsat-c2-l2``).

Reflectance = DN x scale + offset, read from each asset's ``raster:bands`` (2.75e-05, -0.2 for
C2 L2 SR); an item without them is refused rather than guessed. ``qa_pixel`` bits: 0 fill,
1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow (5 snow, 6 clear, 7 water are not masked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from msc_france.errors import SourceError
from msc_france.products.base import ProductRules, band_info

if TYPE_CHECKING:
    from msc_france.config import SensorSpec

QA_FILL = 1 << 0
QA_NOT_CLEAR = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4)


class LandsatC2L2(ProductRules):
    """Landsat-8/9 C2 L2 rules: declared scale/offset and qa_pixel bits."""

    name: ClassVar[str] = "landsat-c2-l2"
    mask_types: ClassVar[tuple[str, ...]] = ("qa_pixel",)

    def radiometry(self, spec: SensorSpec, item: dict[str, Any], key: str,
                   asset: dict[str, Any], index: int) -> tuple[float, float, str]:
        """Scale and offset from ``raster:bands``; refused when the item does not declare them."""
        info = band_info(asset, index)
        if "scale" not in info or "offset" not in info:
            raise SourceError(f"item {item.get('id')} asset '{key}' lacks raster:bands scale/offset")
        scale, offset = float(info["scale"]), float(info["offset"])
        return scale, offset, f"DN * {scale:g} {offset:+g}"

    def scene_key(self, item: dict[str, Any]) -> str:
        """USGS's ``landsat:scene_id`` (LC81960302023152LGN00), which every provider states; else the
        platform, WRS path/row and date.
        """
        props = item.get("properties", {})
        if props.get("landsat:scene_id"):
            return f"landsat|{props['landsat:scene_id']}"
        when = str(props.get("datetime") or "")[:10]
        return (f"landsat|{str(props.get('platform', '')).lower()}|{props.get('landsat:wrs_path', '')}|"
                f"{props.get('landsat:wrs_row', '')}|{when}") if when else super().scene_key(item)

    def decode_mask(self, type: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """qa_pixel: fill bit -> nodata; dilated cloud, cirrus, cloud, shadow -> not clear."""
        if type != "qa_pixel":
            return super().decode_mask(type, raw)
        qa = raw.astype(np.uint16)
        return (qa & QA_FILL) > 0, (qa & QA_NOT_CLEAR) > 0
