"""Product rules: how each kind of source product maps its files to store values and masks.

Every supported product family has one module here (Sentinel-2 L2A, Landsat C2 L2, Theia/MAJA
L2A, plain rasters such as BD ORTHO, SPOT-6/7 or WorldCover). A module turns a STAC item into a
frozen :class:`~msc_france.products.base.SourceItem` (hrefs, band indexes, nodata, scale and
offset per asset, the masks to read) and decodes its quality masks. The warper never needs to
know which product it reads: adding a product means one module that calls :func:`register_product`
(or, from another package, an entry point in the ``msc_france.products`` group naming its
:class:`~msc_france.products.base.ProductRules` class, as xarray finds backends) and a sensor YAML
that names it. The config schema names no product or mask type; each product checks the sensor
specs that name it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from msc_france.errors import BadInputError, first_line
from msc_france.products.base import AssetRead, MaskRead, ProductRules, SourceItem
from msc_france.products.landsat import LandsatC2L2
from msc_france.products.raster import Raster
from msc_france.products.sentinel2 import Sentinel2L2A
from msc_france.products.theia import TheiaL2A

if TYPE_CHECKING:
    from msc_france.config import Catalog, SensorSpec

log = logging.getLogger(__name__)

#: Product name (the ``product`` key of a sensor YAML) -> its rules (:func:`register_product`).
PRODUCTS: dict[str, ProductRules] = {}
#: The entry-point group other packages register product rules in.
ENTRY_POINT_GROUP = "msc_france.products"
_loaded_entry_points = False


def register_product(rules: ProductRules, replace: bool = False) -> ProductRules:
    """Make ``rules`` the reader of sensors whose YAML says ``product: <rules.name>``.

    Raises:
        BadInputError: a name already registered (unless ``replace``), or rules without a name.
    """
    if not rules.name:
        raise BadInputError(f"{type(rules).__name__} has no name")
    if rules.name in PRODUCTS and not replace and type(PRODUCTS[rules.name]) is not type(rules):
        raise BadInputError(f"product '{rules.name}' is already registered by {type(PRODUCTS[rules.name]).__name__}")
    PRODUCTS[rules.name] = rules
    return rules


def _load_entry_points() -> None:
    """Register the product rules other installed packages declare (once per process)."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
            register_product(cls() if isinstance(cls, type) else cls)
        except Exception as e:  # noqa: BLE001 (a broken plug-in is named, never fatal to the others)
            log.warning(f"product plug-in {ep.name} ({ep.value}) not loaded: {first_line(e)[:160]}")


for _rules in (Sentinel2L2A(), LandsatC2L2(), TheiaL2A(), Raster()):
    register_product(_rules)


def rules_for(product: str) -> ProductRules:
    """The rules of a product family.

    Raises:
        BadInputError: no module defines ``product``.
    """
    if product not in PRODUCTS:
        _load_entry_points()
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


__all__ = ["ENTRY_POINT_GROUP", "PRODUCTS", "AssetRead", "MaskRead", "ProductRules", "SourceItem", "check_catalog",
           "check_sensor", "register_product", "rules_for"]
