"""Chips as georeferenced :mod:`xarray` objects: what users of rioxarray, odc-geo or xarray-spatial
expect from a store's API (one chip, any group and overview level, with its coordinates, band names,
CRS and validity).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from msc_france.errors import BadInputError
from msc_france.grid import Chip

if TYPE_CHECKING:
    import xarray as xr

    from msc_france.store.core import Store


def chip_dataset(store: Store, chip_id: str, group: str, factor: int = 1) -> xr.Dataset:
    """One chip of one group as an :class:`xarray.Dataset`.

    Variables: ``image`` (band, y, x) in stored units (``scale``/``offset``/``units`` in its
    attributes; ``class`` (y, x) for labels) and ``valid`` (y, x) booleans. Coordinates: pixel
    centres ``x``, ``y`` in Lambert-93 metres, ``band`` names, and ``spatial_ref`` with the CF grid
    mapping (rioxarray reads it as the CRS).

    Args:
        store: an open store.
        chip_id: the chip (``Store.index()["chip_id"]``).
        group: a sensor group or ``labels``.
        factor: an overview level of the group (1: full resolution).

    Raises:
        BadInputError: an unknown chip or overview level. StoreError: a group the store lacks or
            a damaged shard.
    """
    import xarray as xr

    from msc_france.store.read import ChipReader
    from msc_france.store.schema import grid_mapping_attrs

    layer = store.layer(group)
    if factor != 1 and factor not in layer.overviews:
        raise BadInputError(f"{group} has no overview level {factor} (it has {list(layer.overviews) or 'none'})")
    ids = store.chip_ids()
    if chip_id not in ids:
        raise BadInputError(f"store {store.url} has no chip {chip_id}")
    index = ids.index(chip_id)
    reader = ChipReader(store)
    data = reader.read(group, layer.data_name, index, factor)
    valid = reader.read(group, "valid", index, factor).astype(bool)
    minx, miny, maxx, maxy = Chip.from_id(chip_id).bounds
    n = data.shape[-1]
    step = (maxx - minx) / n
    coords = {"x": minx + (np.arange(n) + 0.5) * step, "y": maxy - (np.arange(n) + 0.5) * step,
              "spatial_ref": xr.DataArray(0, attrs=grid_mapping_attrs())}
    attrs = {"scale": layer.scale, "offset": layer.offset, "units": layer.units, "grid_mapping": "spatial_ref",
             "gsd": layer.gsd * factor, "chip_id": chip_id}
    if layer.is_label:
        image = xr.DataArray(data, dims=("y", "x"), attrs=attrs)
    else:
        coords["band"] = list(layer.bands)
        image = xr.DataArray(data, dims=("band", "y", "x"), attrs=attrs)
    return xr.Dataset({layer.data_name: image, "valid": (("y", "x"), valid)}, coords=coords,
                      attrs={"group": group, "sensor": layer.sensor, "crs": "EPSG:2154"})


__all__ = ["chip_dataset"]
