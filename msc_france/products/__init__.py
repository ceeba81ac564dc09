"""Product rules: how each kind of source product maps its files to store values and masks.

Every supported product family has one module here (Sentinel-2 L2A, Landsat C2 L2, Theia/MAJA
L2A, plain rasters such as BD ORTHO, SPOT-6/7 or WorldCover). A module turns a STAC item into a
frozen :class:`~msc_france.products.base.SourceItem` (hrefs, band indexes, nodata, scale and
offset per asset, the masks to read) and decodes its quality masks. The warper never needs to
know which product it reads: adding a product means adding a module and a catalog entry.
"""

from __future__ import annotations

from msc_france.products.base import AssetRead, MaskRead, ProductRules, SourceItem
from msc_france.products.landsat import LandsatC2L2
from msc_france.products.raster import Raster
from msc_france.products.sentinel2 import Sentinel2L2A
from msc_france.products.theia import TheiaL2A

#: Product name (the ``product`` key of a sensor YAML) -> its rules.
PRODUCTS: dict[str, ProductRules] = {
    r.name: r for r in (Sentinel2L2A(), LandsatC2L2(), TheiaL2A(), Raster())
}


def rules_for(product: str) -> ProductRules:
    """The rules of a product family (a KeyError names a product no module defines)."""
    return PRODUCTS[product]


__all__ = ["PRODUCTS", "AssetRead", "MaskRead", "ProductRules", "SourceItem", "rules_for"]
