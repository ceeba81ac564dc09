"""Plain rasters: BD ORTHO aerial tiles, SPOT-6/7 orthos, WorldCover labels, any GeoTIFF/JP2.

Values map to physical units through the asset's ``raster:bands`` scale/offset when the item
declares them, else through the sensor's ``values`` (default: identity, values are DN).
Coverage comes from the file itself (its nodata, internal mask or alpha band), else from the
item's or the sensor's declared nodata; there are no quality masks.
"""

from __future__ import annotations

from typing import ClassVar

from msc_france.products.base import ProductRules


class Raster(ProductRules):
    """Rasters whose only product rule is their declared radiometry and nodata."""

    name: ClassVar[str] = "raster"
