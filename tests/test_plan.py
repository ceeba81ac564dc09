"""Plan selection rules, and plans of the tiny demo world."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import pystac
import pytest
from shapely.geometry import box, mapping

from msc_france.config import load_catalog, load_recipe
from msc_france.crs import L93, WGS84, reproject_geometry
from msc_france.errors import BadInputError
from msc_france.grid import Chip
from msc_france.plan import make_plan, rank_candidates
from msc_france.regions import parse_region

CHIP = Chip(960, 589, 6532)


def _item(iid: str, bounds_l93, day: int, cloud: float | None, platform: str = "sentinel-2b") -> pystac.Item:
    geom = reproject_geometry(box(*bounds_l93), L93, WGS84)
    props = {"platform": platform}
    if cloud is not None:
        props["eo:cloud_cover"] = cloud
    return pystac.Item(iid, mapping(geom), list(geom.bounds), dt.datetime(2021, 6, day, 10, tzinfo=dt.UTC), props)


def _rank(items, max_candidates=3, target=dt.date(2021, 6, 15)):
    out = rank_candidates([CHIP], items, "s2", target, "eo:cloud_cover", max_candidates)
    return out.get((CHIP.id, "s2"), [])


def _around(chip: Chip, pad: float = 100):
    x0, y0, x1, y1 = chip.bounds
    return (x0 - pad, y0 - pad, x1 + pad, y1 + pad)


def test_least_cloudy_full_coverage_wins() -> None:
    c = _rank([_item("a", _around(CHIP), 10, 40.0), _item("b", _around(CHIP), 20, 5.0),
               _item("c", _around(CHIP), 12, 70.0)])
    assert [x.items[0].id for x in c] == ["b", "a", "c"]
    assert [x.rank for x in c] == [1, 2, 3]
    assert c[0].coverage == pytest.approx(1.0)
    assert "cloud 5.0%" in c[0].reason


def test_ties_broken_by_distance_to_target() -> None:
    c = _rank([_item("far", _around(CHIP), 1, 10.0), _item("near", _around(CHIP), 14, 10.0)])
    assert [x.items[0].id for x in c] == ["near", "far"]
    assert c[0].days_from_target == 1


def test_partial_coverage_ranks_by_expected_valid() -> None:
    x0, y0, x1, y1 = CHIP.bounds
    half = (x0 - 100, y0 - 100, (x0 + x1) / 2, y1 + 100)
    c = _rank([_item("half-clear", half, 15, 0.0), _item("full-cloudy", _around(CHIP), 15, 30.0, "s2a")])
    assert c[0].items[0].id == "full-cloudy"  # 0.7 expected valid beats 0.5
    assert c[1].coverage == pytest.approx(0.5, abs=1e-3)


def test_mosaic_of_one_acquisition() -> None:
    x0, y0, x1, y1 = CHIP.bounds
    west = (x0 - 100, y0 - 100, x0 + 600, y1 + 100)
    east = (x0 + 400, y0 - 100, x1 + 100, y1 + 100)
    c = _rank([_item("w", west, 15, 10.0), _item("e", east, 15, 20.0)])
    assert len(c) == 1
    assert {i.id for i in c[0].items} == {"w", "e"}
    assert c[0].coverage == pytest.approx(1.0)
    assert c[0].cloud_cover == 20.0  # the worst of the mosaic
    assert "mosaic of 2 items" in c[0].reason


def test_redundant_items_are_not_mosaicked() -> None:
    c = _rank([_item("big", _around(CHIP, 500), 15, 10.0), _item("small", _around(CHIP, 50), 15, 10.0)])
    assert [i.id for i in c[0].items] == ["big"]


def test_max_candidates_and_non_covering() -> None:
    items = [_item(f"i{d}", _around(CHIP), d, float(d)) for d in range(1, 8)]
    items.append(_item("elsewhere", (0, 0, 1000, 1000), 15, 0.0))
    c = _rank(items, max_candidates=2)
    assert [x.items[0].id for x in c] == ["i1", "i2"]


def test_tiny_world_plan(tiny_world: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path) -> None:
    rec = load_recipe(str(tiny_recipe))
    plan = make_plan(parse_region(str(tiny_region)), rec, load_catalog(rec.catalog))
    counts = plan.counts()
    assert set(counts) == {"sentinel-2-l2a", "landsat-8-c2-l2", "aerial", "esa-worldcover"}
    assert all(c["chips"] == 4 and c["planned"] == 4 for c in counts.values())
    assert counts["landsat-8-c2-l2"]["items"] == 3  # landsat-9 and the 70%-cloud date filtered out
    assert counts["aerial"]["mosaic"] == 4  # 960 m chips straddle the 1 km aerial tiles
    out = tmp_path / "plan.parquet"
    plan.write(out)
    gdf = gpd.read_parquet(out)
    assert gdf.crs.to_epsg() == 2154
    best = gdf[gdf["rank"] == 1]
    assert len(best) == 16
    s2 = best[best.sensor == "sentinel-2-l2a"]
    assert (s2.cloud_cover <= 60).all() and s2.reason.str.contains("expected valid").all()


def test_plan_refuses_empty_search(tiny_world: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path) -> None:
    import yaml

    rec = yaml.safe_load(tiny_recipe.read_text())
    rec["time"] = {"start": "2015-01-01", "end": "2015-12-31"}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(rec))
    r = load_recipe(str(p))
    with pytest.raises(BadInputError, match="no aerial items for region 'tiny' between 2015-01-01 and 2015-12-31"):
        make_plan(parse_region(str(tiny_region)), r, load_catalog(r.catalog))
