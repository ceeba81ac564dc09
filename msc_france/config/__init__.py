"""Configuration models, one module per concern, all strict (unknown keys are errors).

- ``base``: the strict base model and the YAML loaders;
- ``sensors``: sensor specs, their sources and the catalogs that group them (and the demo world);
- ``recipe``: build recipes and the checks that tie them to a catalog.
"""

from __future__ import annotations

from msc_france.config.base import StrictModel, load_config_mapping, load_yaml, parse_model
from msc_france.config.recipe import (
    LabelRecipe,
    Recipe,
    SensorRecipe,
    SplitSpec,
    TimeWindow,
    check_chip_size,
    load_recipe,
    resolve_recipe_path,
    sensor_gsds,
)
from msc_france.config.sensors import (
    BandSpec,
    Catalog,
    DemoWorldSpec,
    MaskSpec,
    SensorSpec,
    SourceSpec,
    ValueMapping,
    WmsDates,
    WmsSpec,
    load_catalog,
    resolve_catalog_dir,
)

__all__ = ["BandSpec", "Catalog", "DemoWorldSpec", "LabelRecipe", "MaskSpec", "Recipe", "SensorRecipe", "SensorSpec",
           "SourceSpec", "SplitSpec", "StrictModel", "TimeWindow", "ValueMapping", "WmsDates", "WmsSpec", "check_chip_size",
           "load_catalog", "load_config_mapping", "load_recipe", "load_yaml", "parse_model", "resolve_catalog_dir",
           "resolve_recipe_path", "sensor_gsds"]
