"""A STAC description of a store: one collection and one item per region, so that a store can be
catalogued and searched like the sources it came from.

Written by consolidation into ``STORE/stac/`` (``collection.json`` and one ``<item id>.json`` per region), with
hrefs relative to the store, so the description stays true when the store is copied or moved. The
collection declares the datacube extension (dimensions and variables of every group) and the items
the projection extension (Lambert-93 bbox and geometry).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pystac
from shapely.geometry import box, mapping
from shapely.ops import unary_union

from msc_france.crs import L93, WGS84, reproject_geometry
from msc_france.splits import ALL_SPLITS
from msc_france.store.chip_index import column, field_column

if TYPE_CHECKING:
    import geopandas as gpd

    from msc_france.store.core import Store

DATACUBE = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
STAC_DIR = "stac"


def _time_range(index: gpd.GeoDataFrame) -> tuple[dt.datetime | None, dt.datetime | None]:
    cols = [c for c in index.columns if c.startswith("datetime_")]
    if not cols or index.empty:
        return None, None
    values = index[cols].stack().dropna()
    if values.empty:
        return None, None
    return values.min().to_pydatetime(), values.max().to_pydatetime()


def _cube(store: Store, index: gpd.GeoDataFrame) -> tuple[dict[str, Any], dict[str, Any]]:
    xmin, ymin, xmax, ymax = (index.total_bounds.tolist() if len(index) else [0.0, 0.0, 0.0, 0.0])
    dims: dict[str, Any] = {
        "chip": {"type": "other", "description": "chips of the Lambert-93 chip grid (see chip_id, index.parquet)",
                 "extent": [0, max(len(index) - 1, 0)]},
        "x": {"type": "spatial", "axis": "x", "extent": [xmin, xmax], "reference_system": 2154,
              "description": "pixel centres per chip: x (chip, x); the step is the group's gsd"},
        "y": {"type": "spatial", "axis": "y", "extent": [ymin, ymax], "reference_system": 2154,
              "description": "pixel centres per chip: y (chip, y); the step is minus the group's gsd"},
    }
    bands: list[str] = []
    variables: dict[str, Any] = {}
    for L in store.layers:
        if L.is_label:
            variables[f"{L.group}/class"] = {"type": "data", "dimensions": ["chip", "y", "x"],
                                             "description": f"{L.sensor} class codes at {L.gsd:g} m, 0 = no data"}
        else:
            bands += [b for b in L.bands if b not in bands]
            variables[f"{L.group}/image"] = {
                "type": "data", "dimensions": ["chip", "band", "y", "x"], "unit": L.units,
                "description": f"{L.sensor} at {L.gsd:g} m, {L.dtype}, physical = stored x {L.scale:g} + "
                               f"{L.offset:g}, 0 = no data"}
        variables[f"{L.group}/valid"] = {"type": "auxiliary", "dimensions": ["chip", "y", "x"],
                                         "description": f"{L.group}: 1 = covered and clear"}
    dims["band"] = {"type": "bands", "values": bands}
    return dims, variables


def describe(store: Store, index: gpd.GeoDataFrame) -> tuple[pystac.Collection, list[pystac.Item]]:
    """The collection and the per-region items of ``store`` (hrefs relative to ``STORE/stac/``)."""
    meta = store.meta
    start, end = _time_range(index)
    geoms = [reproject_geometry(box(*g.bounds), L93, WGS84) for g in index.geometry]
    bbox = list(unary_union(geoms).bounds) if geoms else [-180.0, -90.0, 180.0, 90.0]
    name = meta.recipe_name
    collection = pystac.Collection(
        id=f"msc-france-{name}",
        description=f"MSC-France store built with recipe {name}: {len(index)} co-located chips of "
                    f"{meta.chip_size_m} m in EPSG:2154, groups {', '.join(L.group for L in store.layers)}",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[start, end]])),
        license="other",
        stac_extensions=[DATACUBE],
    )
    dims, variables = _cube(store, index)
    collection.extra_fields["cube:dimensions"] = dims
    collection.extra_fields["cube:variables"] = variables
    collection.add_asset("zarr", pystac.Asset("../", media_type=ZARR_MEDIA_TYPE, roles=["data"],
                                              title="the Zarr v3 store (consolidated metadata)"))
    collection.add_asset("index", pystac.Asset("../index.parquet", media_type=PARQUET_MEDIA_TYPE,
                                               roles=["metadata"], title="GeoParquet chip index"))
    items = []
    regions = sorted({r for rs in index["region"] for r in str(rs).split(",") if r})
    for region in regions:
        rows = index[index["region"].str.split(",").apply(lambda rs, r=region: r in rs)]
        footprint_l93 = unary_union(list(rows.geometry))
        footprint = reproject_geometry(footprint_l93, L93, WGS84)
        r_start, r_end = _time_range(rows)
        props: dict[str, Any] = {
            "proj:code": L93, "proj:bbox": list(footprint_l93.bounds), "msc_france:chips": len(rows),
            "msc_france:splits": {s: int((rows["split"] == s).sum()) for s in ALL_SPLITS},
        }
        for L in store.layers:
            col = field_column("status", L.group)
            props[f"msc_france:ok_{column(L.group)}"] = int((rows[col] == "ok").sum())
        r_start, r_end = r_start or start, r_end or end
        when = None
        if r_start is None or r_end is None:  # nothing acquired (every chip failed): when it was built
            when = dt.datetime.fromisoformat(meta.created) if meta.created else dt.datetime.now(dt.UTC)
            r_start = r_end = None
        item = pystac.Item(id=f"{collection.id}-{region}", geometry=mapping(footprint), bbox=list(footprint.bounds),
                           datetime=when, start_datetime=r_start, end_datetime=r_end,
                           properties=props, stac_extensions=[PROJECTION], collection=collection.id)
        item.add_asset("zarr", pystac.Asset("../", media_type=ZARR_MEDIA_TYPE, roles=["data"]))
        item.add_asset("index", pystac.Asset("../index.parquet", media_type=PARQUET_MEDIA_TYPE, roles=["metadata"]))
        items.append(item)
    return collection, items


def write(store: Store, index: gpd.GeoDataFrame) -> None:
    """Write ``STORE/stac/collection.json`` and one ``<region>.json`` item per region."""
    collection, items = describe(store, index)
    for old in store.list_files(f"{STAC_DIR}/*.json"):  # regions are only ever added, but stay exact
        if old != f"{STAC_DIR}/collection.json" and old not in {f"{STAC_DIR}/{i.id}.json" for i in items}:
            store.remove(old)
    links_c = [{"rel": "item", "href": f"./{i.id}.json", "type": "application/geo+json"} for i in items]
    c = collection.to_dict(include_self_link=False, transform_hrefs=False)
    c["links"] = [{"rel": "root", "href": "./collection.json", "type": "application/json"}, *links_c]
    store.write_bytes_atomic(f"{STAC_DIR}/collection.json", _dumps(c))
    for item in items:
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = [{"rel": "collection", "href": "./collection.json", "type": "application/json"},
                      {"rel": "root", "href": "./collection.json", "type": "application/json"}]
        store.write_bytes_atomic(f"{STAC_DIR}/{item.id}.json", _dumps(d))


def _dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)).encode()
