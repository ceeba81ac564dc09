"""A fresh machine's first command: ``msc-france build --region ... --out ...`` with the default recipe
and the default catalog, nothing downloaded by hand. Offline, the default catalog's services are
moved onto real local servers with the one documented setting, ``MSC_FRANCE_ENDPOINTS``: Planetary
Computer's and Earth Search's STAC APIs onto a rustac API over the tiny world, IGN's WMS-R onto
MapServer serving the tiny world's aerial tiles.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import zarr
from rasterio.warp import Resampling, reproject
from shapely.geometry import box

from msc_france.cli import main
from msc_france.crs import L93, WGS84, reproject_geometry
from msc_france.grid import Chip
from tests.conftest import TINY_REGION_L93
from tests.servers import AssetServer, WmsServer, items_served_at, mapserver, rustac_api

pytestmark = pytest.mark.skipif(mapserver() is None, reason="MapServer (Debian's cgi-mapserver) is not installed; "
                                "`.ci/run` installs it")


@pytest.mark.timeout(600)
def test_build_with_the_default_catalog_and_one_setting(tiny_world: Path, tmp_path: Path, monkeypatch) -> None:
    with AssetServer(tiny_world) as assets:
        files = items_served_at(tiny_world, ("sentinel-2-l2a", "landsat-c2-l2", "esa-worldcover"), assets.url, tmp_path)
        tiles = sorted((tiny_world / "aerial").glob("*.tif"))
        with rustac_api(files) as stac, WmsServer(
                tmp_path / "wms", {"ORTHOIMAGERY.ORTHOPHOTOS": tiles, "ORTHOIMAGERY.ORTHOPHOTOS.IRC": tiles},
                date="2021-06-15", formats=("image/png", "image/jpeg"),
                bands={"ORTHOIMAGERY.ORTHOPHOTOS": "1,2,3", "ORTHOIMAGERY.ORTHOPHOTOS.IRC": "4,1,2"}) as wms:
            monkeypatch.setenv("MSC_FRANCE_ENDPOINTS", " ".join([
                f"https://planetarycomputer.microsoft.com/api/stac/v1={stac}",
                f"https://earth-search.aws.element84.com/v1={stac}",
                f"https://data.geopf.fr/wms-r={wms.wms_url}"]))
            # Inside one 1,920 m chip of the default recipe (566,400-568,320 E), which the tiny world
            # covers but for its eastern 260 m.
            region = reproject_geometry(box(566600, TINY_REGION_L93[1] + 200, 567300, TINY_REGION_L93[3] - 200),
                                        L93, WGS84).bounds
            out = tmp_path / "first.zarr"
            code = main(["build", "--region", ",".join(f"{v:.6f}" for v in region), "--out", str(out), "--quiet",
                         "--no-cache"])
            getmaps = wms.count("GetMap")
    assert code == 0
    index = gpd.read_parquet(out / "index.parquet")
    assert len(index) == 1
    for group, provider in (("sentinel_2_l2a", "planetary-computer"), ("landsat_8_c2_l2", "planetary-computer"),
                            ("aerial", "ign-geoplateforme")):
        built = index[f"status_{group}"].isin(["ok", "flagged"])
        assert built.all(), index[f"status_{group}"].tolist()
        assert (index[f"provider_{group}"] == provider).all()
    assert (index["date_rule_aerial"] == "capabilities").all()
    assert (index["datetime_aerial"].dt.date.astype(str) == "2021-06-15").all()
    assert getmaps == 2 * 4  # two layers, 6,400 px at 0.3 m in 2 x 2 pieces of <= 4,096
    # The aerial pixels against GDAL's own average of the tiles onto each chip's grid (nodata 0).
    g = zarr.open_group(str(out), mode="r")["aerial"]
    for i, cid in enumerate(index["chip_id"]):
        grid = Chip.from_id(cid).pixel_grid(1.5)
        ref = np.zeros((4, grid.height, grid.width), np.float32)
        for f in tiles:
            with rasterio.open(f) as r:
                part = np.zeros_like(ref)
                reproject(r.read(), part, src_transform=r.transform, src_crs=r.crs, src_nodata=0,
                          dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=0,
                          resampling=Resampling.average)
            ref = np.where(ref == 0, part, ref)
        valid = np.asarray(g["valid"][i]).astype(bool)
        inner = valid & (ref > 0).all(axis=0)
        inner[:1], inner[-1:], inner[:, :1], inner[:, -1:] = False, False, False, False
        diff = np.abs(np.asarray(g["image"][i]).astype(np.float32) - ref)[:, inner]
        assert inner.sum() > 10_000 and diff.mean() <= 1.0, f"{cid}: {diff.mean():.2f} DN from GDAL's average"
