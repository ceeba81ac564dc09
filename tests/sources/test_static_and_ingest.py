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
from msc_france.errors import BadInputError, SourceError
from msc_france.sources.base import SearchQuery
from msc_france.sources.ingest import ingest_directory
from msc_france.sources.static import StaticSource

WKT_NO_AUTHORITY = (
    'PROJCS["RGF93_Lambert_93",GEOGCS["GCS_RGF_1993",DATUM["D_RGF_1993",SPHEROID["GRS_1980",6378137.0,'
    '298.257222101]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Conformal_Conic"],PARAMETER["False_Easting",700000.0],'
    'PARAMETER["False_Northing",6600000.0],PARAMETER["Central_Meridian",3.0],'
    'PARAMETER["Standard_Parallel_1",44.0],PARAMETER["Standard_Parallel_2",49.0],'
    'PARAMETER["Latitude_Of_Origin",46.5],UNIT["Meter",1.0]]'
)


def _tile(path: Path, x0: float, y1: float, count: int, crs: str = "EPSG:2154", date: str | None = None) -> None:
    profile = dict(driver="GTiff", width=100, height=100, count=count, dtype="uint8", crs=crs,
                   transform=Affine(5, 0, x0, 0, -5, y1))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((count, 100, 100), 100, np.uint8))
        if date:
            dst.update_tags(TIFFTAG_DATETIME=date)


def test_ingest_pairs_rvb_and_irc(tmp_path: Path) -> None:
    src = tmp_path / "bdortho"
    src.mkdir()
    _tile(src / "31-2021-0565-6272-LA93-0M50-RVB-E080.tif", 565000, 6272000, 3)
    _tile(src / "31-2021-0565-6272-LA93-0M50-IRC-E080.tif", 565000, 6272000, 3)
    _tile(src / "31-2021-0565-6271-LA93-0M50-RVB-E080.tif", 565000, 6271500, 3, crs=WKT_NO_AUTHORITY)
    n = ingest_directory(src, tmp_path / "cat")
    assert n == 2
    items = {i.id: i for i in pystac.Catalog.from_file(str(tmp_path / "cat" / "catalog.json")).get_items(recursive=True)}
    paired = items["31-2021-0565-6272-LA93-0M50-E080"]
    assert set(paired.assets) == {"rgb", "irc"}
    assert paired.properties["proj:code"] == "EPSG:2154"
    assert paired.datetime.year == 2021 and paired.properties["msc_france:datetime_source"] == "filename-year"
    assert [b["name"] for b in paired.assets["irc"].extra_fields["eo:bands"]] == ["nir", "red", "green"]
    # A Lambert-93 WKT without authority code is recognised as EPSG:2154.
    assert items["31-2021-0565-6271-LA93-0M50-E080"].properties["proj:epsg"] == 2154


def test_ingest_datetime_from_tag_or_cli(tmp_path: Path) -> None:
    src = tmp_path / "tiles"
    src.mkdir()
    _tile(src / "tile_a.tif", 565000, 6272000, 4, date="2022:06:14 10:00:00")
    ingest_directory(src, tmp_path / "c1")
    item = next(pystac.Catalog.from_file(str(tmp_path / "c1" / "catalog.json")).get_items(recursive=True))
    assert item.datetime.date() == dt.date(2022, 6, 14) and set(item.assets) == {"image"}
    _tile(src / "tile_b.tif", 566000, 6272000, 4)
    with pytest.raises(BadInputError, match="tile_b.tif carries no acquisition date; pass --datetime"):
        ingest_directory(src, tmp_path / "c2")
    assert ingest_directory(src, tmp_path / "c3", when="2020-07-01") == 2
    with pytest.raises(BadInputError, match="bad --datetime"):
        ingest_directory(src, tmp_path / "c4", when="July")


def test_ingest_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not a directory"):
        ingest_directory(tmp_path / "none", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no .jp2/.tif/.tiff tiles"):
        ingest_directory(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.tif").write_bytes(b"not a tiff")
    with pytest.raises(BadInputError, match="cannot read"):
        ingest_directory(tmp_path / "broken", tmp_path / "out")


def test_static_catalog_search(tmp_path: Path) -> None:
    src = tmp_path / "tiles"
    src.mkdir()
    _tile(src / "31-2021-0565-6272-LA93-0M50-RVB.tif", 565000, 6272000, 3)
    _tile(src / "31-2019-0600-6300-LA93-0M50-RVB.tif", 600000, 6300000, 3)
    ingest_directory(src, tmp_path / "cat")
    s = StaticSource(SourceSpec(type="static", path="x", collection="aerial"), path=tmp_path / "cat" / "catalog.json")
    from msc_france.crs import L93, WGS84, reproject_geometry
    from shapely.geometry import box

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
