"""Product rules: how each kind of source product maps its files to store values and masks.

Every supported product family has one module here (Sentinel-2 L2A, Landsat C2 L2, Theia/MAJA
L2A, plain rasters such as BD ORTHO, SPOT-6/7 or WorldCover). A module turns a STAC item into a
frozen :class:`~msc_france.products.base.SourceItem` (hrefs, band indexes, nodata, scale and
offset per asset, the masks to read) and decodes its quality masks. The warper never needs to
know which product it reads: adding a product means adding a module and a catalog entry (the
config schema names no product; each product checks the sensor specs that name it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msc_france.errors import BadInputError
from msc_france.products.base import AssetRead, MaskRead, ProductRules, SourceItem
from msc_france.products.landsat import LandsatC2L2
from msc_france.products.raster import Raster
from msc_france.products.sentinel2 import Sentinel2L2A
from msc_france.products.theia import TheiaL2A

if TYPE_CHECKING:
    from msc_france.config import Catalog, SensorSpec

#: Product name (the ``product`` key of a sensor YAML) -> its rules.
PRODUCTS: dict[str, ProductRules] = {
    r.name: r for r in (Sentinel2L2A(), LandsatC2L2(), TheiaL2A(), Raster())
}


def rules_for(product: str) -> ProductRules:
    """The rules of a product family.

    Raises:
        BadInputError: no module defines ``product``.
    """
    rules = PRODUCTS.get(product)
    if rules is None:
        raise BadInputError(f"unknown product '{product}' (known: {', '.join(sorted(PRODUCTS))})")
    return rules


def check_sensor(spec: SensorSpec) -> ProductRules:
    """The rules that read ``spec``'s items, after they checked the spec (the schema in
    :mod:`msc_france.config` knows no product).

    Raises:
        BadInputError: an unknown product, or a spec the product cannot read.
    """
    try:
        rules = rules_for(spec.product)
    except BadInputError as e:
        raise BadInputError(f"sensor '{spec.name}': {e}") from None
    rules.check(spec)
    return rules


def check_catalog(catalog: Catalog) -> Catalog:
    """``catalog`` once every sensor's product has checked its spec (see :func:`check_sensor`).

    Raises:
        BadInputError: naming the catalog directory and the sensor.
    """
    for spec in catalog.sensors.values():
        try:
            check_sensor(spec)
        except BadInputError as e:
            raise BadInputError(f"catalog {catalog.path}: {e}") from None
    return catalog


__all__ = ["PRODUCTS", "AssetRead", "MaskRead", "ProductRules", "SourceItem", "check_catalog", "check_sensor",
           "rules_for"]
