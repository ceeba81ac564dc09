"""Static catalogs searched in-process, and `catalog ingest` of BD ORTHO-like tiles."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine

from msc_france.config import SourceSpec
from msc_france.errors import SourceError
from msc_france.ingest import ingest
from msc_france.sources.base import SearchQuery
from msc_france.sources.static import StaticSource


def _tile(path: Path, x0: float, y1: float, count: int, crs: str = "EPSG:2154", date: str | None = None) -> None:
    # 500 m at 0.5 m, as a BD ORTHO tile can be (sub-metre, Lambert-93).
    profile = dict(driver="GTiff", width=1000, height=1000, count=count, dtype="uint8", crs=crs,
                   transform=Affine(0.5, 0, x0, 0, -0.5, y1), compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((count, 1000, 1000), 100, np.uint8))
        if date:
            dst.update_tags(TIFFTAG_DATETIME=date)


def test_ingest_datetime_from_tag_or_cli(tmp_path: Path) -> None:
    src = tmp_path / "tiles"
    src.mkdir()
    _tile(src / "tile_a.tif", 565000, 6272000, 4, date="2022:06:14 10:00:00")
    ingest(src, tmp_path / "c1")
    item = next(pystac.Catalog.from_file(str(tmp_path / "c1" / "catalog.json")).get_items(recursive=True))
    assert item.datetime.date() == dt.date(2022, 6, 14) and set(item.assets) == {"image"}
    _tile(src / "tile_b.tif", 566000, 6272000, 4)
    r = ingest(src, tmp_path / "c2")
    assert r.items == 1 and [(p.name, why) for p, why in r.skipped] == [
        ("tile_b.tif", "no acquisition date in the file or its name (pass --datetime)")]
    assert ingest(src, tmp_path / "c3", when="2020-07-01").items == 2


def test_static_catalog_search(tmp_path: Path) -> None:
    src = tmp_path / "tiles"
    src.mkdir()
    _tile(src / "31-2021-0565-6272-LA93-0M50-RVB.tif", 565000, 6272000, 3)
    _tile(src / "31-2019-0600-6300-LA93-0M50-RVB.tif", 600000, 6300000, 3)
    ingest(src, tmp_path / "cat")
    s = StaticSource(SourceSpec(type="static", path="x", collection="aerial"), path=tmp_path / "cat" / "catalog.json")
    from shapely.geometry import box

    from msc_france.crs import L93, WGS84, reproject_geometry

    bbox = reproject_geometry(box(565100, 6271600, 565200, 6271700), L93, WGS84).bounds
    hits = s.search(SearchQuery("aerial", bbox, dt.date(2021, 1, 1), dt.date(2021, 12, 31)))
    assert [i.id for i in hits] == ["31-2021-0565-6272-LA93-0M50"]
    assert Path(hits[0].assets["rgb"].href).is_absolute() and Path(hits[0].assets["rgb"].href).exists()
    assert s.search(SearchQuery("aerial", bbox, dt.date(2019, 1, 1), dt.date(2019, 12, 31))) == []
    assert s.search(SearchQuery("other", bbox, dt.date(2021, 1, 1), dt.date(2021, 12, 31))) == []


def test_missing_static_catalog(tmp_path: Path) -> None:
    s = StaticSource(SourceSpec(type="static", path="x", collection="aerial"), path=tmp_path / "nope.json")
    with pytest.raises(SourceError, match="static catalog not found"):
        s.search(SearchQuery("aerial", (0, 40, 5, 50), dt.date(2021, 1, 1), dt.date(2021, 12, 31)))
