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


def test_arrays_declare_the_geozarr_conventions_they_follow(tiny_store: Path) -> None:
    """Every pixel array and sensor group registers the proj and spatial conventions (v1 uuids),
    names spatial dimensions the array has, gives its chip shape, and each chip's row of
    ``spatial_transform`` is rasterio's own Affine for that chip, in ``spatial:transform`` order.
    """
    import zarr
    from rasterio.transform import from_origin

    root = zarr.open_group(str(tiny_store), mode="r", zarr_format=3)
    uuids = {"proj": "f17cb550-5864-4468-aeb7-f3180cfb622f", "spatial": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4"}
    checked = 0
    for name in root.group_keys():
        g = root[name]
        for node in (g, *(g[a] for a in g.array_keys() if g[a].ndim >= 3)):
            attrs = dict(node.attrs)
            assert {c["name"]: c["uuid"] for c in attrs["zarr_conventions"]} == uuids
            assert attrs["proj:code"] == "EPSG:2154" and attrs["spatial:registration"] == "pixel"
            if isinstance(node, zarr.Array):
                dims = list(node.metadata.dimension_names)
                assert attrs["spatial:dimensions"] == dims[-2:] == ["y", "x"]
                assert attrs["spatial:shape"] == list(node.shape[-2:])
                checked += 1
        gsd, t = float(g.attrs["gsd"]), g[g.attrs["msc_france:transform_array"]][:]
        for i, (x0, y1) in enumerate(zip(g["chip_xmin"][:], g["chip_ymax"][:], strict=True)):
            assert list(t[i]) == pytest.approx(list(from_origin(x0, y1, gsd, gsd))[:6])
    assert checked > 0
