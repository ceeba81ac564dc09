"""``msc_france.testing``: the tiny store downstream users build for their own tests, and the
store's chips as georeferenced xarray objects (checked against rasterio's own transform maths).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio.transform
import zarr

from msc_france.data import MSCFranceDataset
from msc_france.grid import Chip
from msc_france.store import Store
from msc_france.testing import tiny_store


def test_tiny_store_builds_a_real_store_a_loader_reads(tmp_path: Path) -> None:
    out = tiny_store(tmp_path / "t.zarr")
    st = Store.open(str(out))
    assert st.meta.complete and len(st.chip_ids()) == 4
    assert sorted(L.group for L in st.layers) == ["aerial", "labels", "landsat-8-c2-l2", "sentinel-2-l2a"]
    ds = MSCFranceDataset(out, split=None, size=32, labels=True)
    s = ds[0]
    assert s["aerial"]["image"].shape == (4, 32, 32) and s["mask"].shape == (32, 32)
    assert not (tmp_path / "cache").exists()  # the world went to a temporary folder


def test_a_chip_as_xarray_is_georeferenced(tiny_store: Path) -> None:
    st = Store.open(str(tiny_store))
    chip_id = st.chip_ids()[1]
    ds = st.chip_xarray(chip_id, "aerial")
    minx, miny, maxx, maxy = Chip.from_id(chip_id).bounds
    n = ds.sizes["x"]
    t = rasterio.transform.from_bounds(minx, miny, maxx, maxy, n, n)  # rasterio's maths, not ours
    xs, ys = rasterio.transform.xy(t, np.arange(n), np.arange(n))
    np.testing.assert_allclose(ds["x"].values, xs)
    np.testing.assert_allclose(ds["y"].values, ys)
    assert list(ds["band"].values) == ["red", "green", "blue", "nir"]
    root = zarr.open_group(str(tiny_store), mode="r")
    i = st.chip_ids().index(chip_id)
    np.testing.assert_array_equal(ds["image"].values, root["aerial"]["image"][i])
    np.testing.assert_array_equal(ds["valid"].values, root["aerial"]["valid"][i].astype(bool))
    assert "Lambert" in ds["spatial_ref"].attrs["spatial_ref"] or "RGF93" in ds["spatial_ref"].attrs["spatial_ref"]
    over = st.chip_xarray(chip_id, "aerial", 5)
    assert over.sizes["x"] == n // 5 and over["image"].attrs["gsd"] == 7.5
    lab = st.chip_xarray(chip_id, "labels")
    assert lab["class"].dims == ("y", "x")
