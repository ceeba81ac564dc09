"""Reading one acquisition mosaicked from two providers' tiles: where the tiles overlap they must
agree, else the chip is refused (an encoding one provider applied and did not declare).

The tiles are GeoTIFFs written here on the chip's own grid from one numpy field, so the expected
chip is that field itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from msc_france.builder.read import read_candidate
from msc_france.config import SensorSpec
from msc_france.errors import SourceError
from msc_france.grid import PixelGrid
from msc_france.products import AssetRead, SourceItem

GRID = PixelGrid("EPSG:2154", Affine(10, 0, 600000, 0, -10, 6400200), 20, 20)
FIELD = np.random.default_rng(3).integers(100, 5000, (20, 20)).astype(np.uint16)


def _spec() -> SensorSpec:
    return SensorSpec.model_validate({
        "name": "s", "title": "two providers", "native_gsd": 10, "default_gsd": 10, "dtype": "uint16",
        "bands": [{"name": "v", "asset": "image"}], "resampling": "nearest", "product": "raster",
        "sources": [{"type": "static", "name": name, "collection": "c", "path": "x.json"} for name in ("a", "b")]})


def _tile(path: Path, cols: slice, add: int, provider: str) -> SourceItem:
    data = FIELD[:, cols].astype(np.int64) + add
    t = GRID.transform @ Affine.translation(cols.start, 0)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=20, count=1, dtype="uint16",
                       crs="EPSG:2154", transform=t, nodata=0) as f:
        f.write(data.astype(np.uint16), 1)
    return SourceItem(path.stem, "raster", 0, (AssetRead("image", str(path), (1,), (0,), 0.0),), (), "none",
                      provider=provider)


def test_two_providers_tiles_that_agree_make_one_chip(tmp_path: Path) -> None:
    left = _tile(tmp_path / "left.tif", slice(0, 12), 0, "a")
    right = _tile(tmp_path / "right.tif", slice(8, 20), 0, "b")
    r = read_candidate(_spec(), [left, right], GRID)
    assert np.array_equal(r.data[0], FIELD) and r.valid.all()
    assert r.providers == "a,b" and r.item_ids == ["left", "right"]


def test_two_providers_tiles_that_disagree_are_refused(tmp_path: Path) -> None:
    left = _tile(tmp_path / "left.tif", slice(0, 12), 0, "a")
    right = _tile(tmp_path / "right.tif", slice(8, 20), 50, "b")  # offset applied by one provider only
    with pytest.raises(SourceError, match=r"items left \(a\) and right \(b\) of one acquisition differ by 50.0 on "
                                          r"average where they overlap \(80 pixels\): refused"):
        read_candidate(_spec(), [left, right], GRID)
    # The same tiles from one provider are one product's tiles: no cross-provider check.
    same = _tile(tmp_path / "right2.tif", slice(8, 20), 50, "a")
    r = read_candidate(_spec(), [left, same], GRID)
    assert np.array_equal(r.data[0, :, :12], FIELD[:, :12])
