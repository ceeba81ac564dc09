"""Region parsing: names, bboxes, files, the France check."""

from __future__ import annotations

from pathlib import Path

import pytest
from shapely.geometry import Point

from msc_france.crs import L93, WGS84, reproject_geometry
from msc_france.errors import BadInputError
from msc_france.regions import france_outline, named_regions, parse_region
from tests.conftest import write_region_file

MSC_CITIES = {"bordeaux", "grenoble", "toulouse"}


def test_named_regions_cover_msc_cities_and_more() -> None:
    regions = named_regions()
    cities = {n for n, f in regions.items() if f["properties"]["kind"] == "city"}
    assert MSC_CITIES <= cities
    assert len(cities - MSC_CITIES) >= 12
    assert "demo" in regions and "france" in regions


@pytest.mark.parametrize("name,lon,lat", [("toulouse", 1.4442, 43.6047), ("paris", 2.3522, 48.8566),
                                          ("grenoble", 5.7245, 45.1885), ("brest", -4.4861, 48.3904)])
def test_city_polygon_contains_its_centre(name: str, lon: float, lat: float) -> None:
    r = parse_region(name)
    centre = reproject_geometry(Point(lon, lat), WGS84, L93)
    assert r.geometry.contains(centre)
    assert 20 < r.area_km2 < 2000


def test_name_is_case_insensitive() -> None:
    assert parse_region("Toulouse").geometry.equals(parse_region("toulouse").geometry)


def test_demo_region_is_sixteen_by_sixteen_chips() -> None:
    from msc_france.grid import chips_in

    r = parse_region("demo")
    assert len(chips_in(r.geometry, 960)) == 256
    assert r.area_km2 == pytest.approx(15.36 * 15.36, rel=1e-6)


def test_bbox_region() -> None:
    r = parse_region("1.40,43.58,1.48,43.63")
    assert r.bbox_wgs84 == pytest.approx((1.40, 43.58, 1.48, 43.63), abs=1e-4)


@pytest.mark.parametrize("text,msg", [
    ("1.4,43.5,1.5", "unknown region"),
    ("1.4,43.5,abc,43.6", "malformed bbox"),
    ("1.5,43.5,1.4,43.6", "inverted or empty bbox"),
    ("1.4,43.6,1.5,43.6", "inverted or empty bbox"),
    ("500000,6200000,510000,6210000", "not in WGS84 degrees"),
    ("-74.1,40.6,-73.9,40.8", "outside metropolitan France"),
    ("toulose", "did you mean toulouse"),
    ("atlantis", "unknown region 'atlantis'"),
])
def test_bad_regions(text: str, msg: str) -> None:
    with pytest.raises(BadInputError, match=msg) as e:
        parse_region(text)
    assert "\n" not in str(e.value)


def test_region_file(tmp_path: Path) -> None:
    p = write_region_file(tmp_path / "zone.gpkg", (565000, 6270000, 567000, 6272000))
    r = parse_region(str(p))
    assert r.name == "zone"
    assert r.geometry.bounds == pytest.approx((565000, 6270000, 567000, 6272000))


def test_region_file_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="region file not found"):
        parse_region(str(tmp_path / "missing.geojson"))
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(BadInputError, match="cannot read region file"):
        parse_region(str(bad))


def test_france_outline_is_plausible() -> None:
    area = france_outline().area / 1e6
    assert 540_000 < area < 650_000  # ~544,000 km2 plus a 10 km buffer
