"""The STAC description of a store, read back by pystac (an independent reader) and checked
against the GeoParquet index read by geopandas.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pystac
import zarr
from pystac.extensions.datacube import DatacubeExtension
from pystac.extensions.projection import ProjectionExtension
from shapely.geometry import shape


def test_collection_and_region_items_describe_the_store(tiny_store: Path) -> None:
    collection = pystac.Collection.from_file(str(tiny_store / "stac" / "collection.json"))
    index = gpd.read_parquet(tiny_store / "index.parquet")
    wgs = index.to_crs(4326)
    # Extent: the chips' WGS84 bounds; time: the acquisitions in the index.
    (bbox,) = collection.extent.spatial.bboxes
    assert all(abs(a - b) < 1e-6 for a, b in zip(bbox, wgs.total_bounds, strict=True))
    times = index[[c for c in index.columns if c.startswith("datetime_")]].stack()
    (interval,) = collection.extent.temporal.intervals
    assert interval[0] == times.min().to_pydatetime() and interval[1] == times.max().to_pydatetime()
    # Datacube: every group's pixel array, with the store's dimensions.
    cube = DatacubeExtension.ext(collection)
    assert set(cube.dimensions) == {"chip", "x", "y", "band"}
    assert cube.dimensions["x"].reference_system == 2154
    root = zarr.open_group(str(tiny_store), mode="r")
    for g in root.group_keys():
        var = f"{g}/class" if g == "labels" else f"{g}/image"
        assert list(cube.variables[var].dimensions) == list(root[g][var.split("/")[1]].metadata.dimension_names)
    # Assets point at the store and the index, relative to the description.
    assert Path(collection.assets["zarr"].get_absolute_href()).resolve() == tiny_store.resolve()
    assert Path(collection.assets["index"].get_absolute_href()).resolve() == (tiny_store / "index.parquet").resolve()
    items = list(collection.get_items())
    assert [i.id for i in items] == [f"{collection.id}-tiny"]
    item = items[0]
    assert item.collection_id == collection.id
    assert shape(item.geometry).buffer(1e-9).contains(wgs.union_all())
    assert abs(shape(item.geometry).area - wgs.union_all().area) < 1e-9
    proj = ProjectionExtension.ext(item)
    assert proj.code == "EPSG:2154"
    assert all(abs(a - b) < 1e-6 for a, b in zip(proj.bbox, index.total_bounds, strict=True))
    assert item.properties["msc_france:chips"] == len(index)
