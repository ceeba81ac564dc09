"""The chip index: complete columns usable without quoting, and ``msc-france index`` exports read
back by independent readers (geopandas, pandas + shapely, GDAL's GeoJSON driver).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import zarr
from shapely import wkt

from msc_france.cli import main


def test_index_columns_are_complete_and_typed(tiny_store: Path) -> None:
    idx = gpd.read_parquet(tiny_store / "index.parquet")
    assert all(c.isidentifier() for c in idx.columns), [c for c in idx.columns if not c.isidentifier()]
    root = zarr.open_group(str(tiny_store), mode="r")
    for g in root.group_keys():
        c = g.replace("-", "_")
        assert isinstance(idx[f"datetime_{c}"].dtype, pd.DatetimeTZDtype) and str(idx[f"datetime_{c}"].dt.tz) == "UTC"
        assert idx[f"datetime_{c}"].notna().all()
        # The same instants as the group's CF-encoded datetime array (seconds since 1970).
        secs = root[g]["datetime"][:]
        assert ((idx[f"datetime_{c}"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1) == secs).all()
        items = idx[f"item_ids_{c}"]
        assert all(len(ids) >= 1 for ids in items)
        assert [",".join(ids) for ids in items] == [str(s) for s in root[g]["item_ids"][:]]
        # Cloud fractions as recorded per chip (NaN for sensors without a cloud mask).
        np.testing.assert_allclose(idx[f"cloud_fraction_{c}"], root[g]["cloud_fraction"][:], rtol=1e-6)
        assert idx[f"valid_fraction_{c}"].between(0, 1).all()
    assert idx["cloud_fraction_sentinel_2_l2a"].between(0, 1).all()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".geojson"])
def test_index_export_reads_back(tiny_store: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"chips{suffix}"
    assert main(["index", str(tiny_store), "--out", str(out)]) == 0
    want = gpd.read_parquet(tiny_store / "index.parquet")
    if suffix == ".parquet":
        got = gpd.read_parquet(out)
        assert got.crs.to_epsg() == 2154 and got.geometry.geom_equals(want.geometry).all()
    elif suffix == ".csv":
        got = pd.read_csv(out)
        geoms = gpd.GeoSeries([wkt.loads(g) for g in got["geometry"]], crs=2154)
        assert geoms.geom_equals(want.geometry).all()
        assert list(got["item_ids_aerial"]) == [" ".join(x) for x in want["item_ids_aerial"]]
    else:
        got = gpd.read_file(out)
        assert got.crs.to_epsg() == 4326
        assert (got.geometry.hausdorff_distance(want.to_crs(4326).geometry) < 1e-9).all()
    assert list(got["chip_id"]) == list(want["chip_id"])
    assert list(got["status_sentinel_2_l2a"]) == list(want["status_sentinel_2_l2a"])


def test_index_prints_and_refuses_unknown_formats(tiny_store: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(tiny_store), "--split", "train"]) == 0
    printed = capsys.readouterr().out.splitlines()
    n_train = int((gpd.read_parquet(tiny_store / "index.parquet")["split"] == "train").sum())
    assert len(printed) == 2 + n_train and printed[0].split()[:3] == ["chip_id", "split", "region"]
    assert main(["index", str(tiny_store), "--out", str(tmp_path / "chips.xlsx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write the index as '.xlsx'") and "\n" not in err
    assert not (tmp_path / "chips.xlsx").exists()


def test_scene_cloud_cover_is_what_the_items_state(tiny_store: Path, tiny_world: Path) -> None:
    """``scene_cloud_cover_<group>``: the mean ``eo:cloud_cover`` of the items a chip was read from,
    as pystac reads them from the world's item collections.
    """
    import pystac

    idx = gpd.read_parquet(tiny_store / "index.parquet")
    checked = 0
    for group, collection in (("sentinel-2-l2a", "sentinel-2-l2a"), ("landsat-8-c2-l2", "landsat-c2-l2")):
        items = pystac.ItemCollection.from_file(str(tiny_world / f"{collection}.json"))
        stated = {it.id: it.properties.get("eo:cloud_cover") for it in items}
        col = group.replace("-", "_")
        for ids, got in zip(idx[f"item_ids_{col}"], idx[f"scene_cloud_cover_{col}"], strict=True):
            if len(ids) == 0:
                assert np.isnan(got)
                continue
            assert got == pytest.approx(np.mean([stated[i] for i in ids]), abs=1e-3)
            checked += 1
    assert checked > 0
