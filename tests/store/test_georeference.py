"""Third-party readers georeference the store right with no extra arguments: xarray (dtypes,
coordinates, no warnings), rioxarray (CRS, transform, to_raster read back by rasterio), odc-geo
(GeoBox). Expected footprints come from the GeoParquet index read by geopandas.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import odc.geo.xr  # noqa: F401  (registers the .odc accessor)
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine

GROUPS = {"sentinel-2-l2a": (np.uint16, 10.0), "landsat-8-c2-l2": (np.uint16, 30.0), "aerial": (np.uint8, 1.5),
          "labels": (np.uint8, 10.0)}


def _open(store: Path, group: str) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning on open is a failure
        return xr.open_zarr(store, group=group)


def test_opening_prints_no_warnings(tiny_store: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        root = zarr.open_group(str(tiny_store), mode="r")
        assert sorted(root.group_keys()) == sorted(GROUPS)
        xr.open_zarr(tiny_store)
        for g in GROUPS:
            xr.open_zarr(tiny_store, group=g)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_rioxarray_and_odc_geo_georeference_every_chip(tiny_store: Path, group: str) -> None:
    dtype, gsd = GROUPS[group]
    ds = _open(tiny_store, group)
    name = "class" if group == "labels" else "image"
    assert ds[name].dtype == dtype  # integers stay integers (no _FillValue float decoding)
    assert "spatial_ref" in ds.coords and "x" in ds.coords and "y" in ds.coords
    index = gpd.read_parquet(tiny_store / "index.parquet").set_index("chip_id")
    assert index.crs.to_epsg() == 2154
    for i in range(ds.sizes["chip"]):
        da = ds[name].isel(chip=i)
        xmin, ymin, xmax, ymax = index.loc[str(da["chip_id"].values)].geometry.bounds
        assert da.rio.crs.to_epsg() == 2154
        assert da.rio.transform().almost_equals(Affine(gsd, 0, xmin, 0, -gsd, ymax), precision=1e-9)
        geobox = da.odc.geobox
        assert geobox is not None and geobox.crs.epsg == 2154
        assert np.allclose(geobox.extent.boundingbox, (xmin, ymin, xmax, ymax), atol=0.01)
        assert tuple(ds["spatial_transform"].values[i]) == pytest.approx((gsd, 0, xmin, 0, -gsd, ymax))


def test_to_raster_writes_the_chip_where_the_index_says(tiny_store: Path, tmp_path: Path) -> None:
    ds = _open(tiny_store, "aerial")
    index = gpd.read_parquet(tiny_store / "index.parquet").set_index("chip_id")
    i = 3
    da = ds["image"].isel(chip=i)
    out = tmp_path / "chip.tif"
    da.rio.to_raster(out)
    raw = zarr.open_group(str(tiny_store), mode="r")["aerial"]["image"][i]
    with rasterio.open(out) as f:
        assert f.crs.to_epsg() == 2154 and f.count == 4 and f.dtypes[0] == "uint8"
        want = index.loc[str(da["chip_id"].values)].geometry.bounds
        assert np.allclose(tuple(f.bounds), want, atol=0.01)  # to the centimetre
        assert f.nodata == 0
        np.testing.assert_array_equal(f.read(), raw)
