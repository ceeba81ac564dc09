"""Sentinel-2 Level-2A from Theia/MAJA (THEIA-LAND products over France).

Bands are int16 GeoTIFFs (``FRE`` flat reflectance by default, or ``SRE``), reflectance x 10000
with no offset, nodata -10000 (negative reflectances are real values). Masks, per resolution
group (``R1`` = 10 m): ``CLM`` is a cloud/shadow bit field (0 = clear, any bit set = a cloud or
cloud-shadow flag of some kind), ``EDG`` is non-zero outside the acquisition, ``SAT`` has one
bit per band for saturation. A CLM raster is not an SCL raster: class codes mean nothing here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from msc_france.products.base import ProductRules, band_info

if TYPE_CHECKING:
    from msc_france.config import SensorSpec

THEIA_NODATA = -10000.0


class TheiaL2A(ProductRules):
    """Theia/MAJA L2A rules: x 10000 reflectance, CLM/EDG/SAT masks."""

    name: ClassVar[str] = "theia-l2a"
    mask_types: ClassVar[tuple[str, ...]] = ("maja-clm", "maja-edg", "maja-sat")

    def radiometry(self, spec: SensorSpec, item: dict[str, Any], key: str,
                   asset: dict[str, Any], index: int) -> tuple[float, float, str]:
        """Reflectance = DN / 10000 (``raster:bands`` scale wins when an item declares one)."""
        info = band_info(asset, index)
        scale, offset = float(info.get("scale", 1e-4)), float(info.get("offset", 0.0))
        return scale, offset, f"theia: DN * {scale:g} {offset:+g}"

    def decode_mask(self, type: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CLM: any bit -> not clear; EDG: non-zero -> nodata; SAT: any bit -> not clear."""
        none = np.zeros(raw.shape, bool)
        if type == "maja-clm":
            return none, raw != 0
        if type == "maja-edg":
            return raw != 0, none
        if type == "maja-sat":
            return none, raw != 0
        return super().decode_mask(type, raw)
