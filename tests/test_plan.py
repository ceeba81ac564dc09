"""Plan selection rules, and plans of the tiny demo world."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
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


def test_footprints_touching_a_chip_by_a_corner_or_an_edge_are_not_candidates() -> None:
    x0, y0, x1, y1 = CHIP.bounds
    corner = _item("corner", (x1, y1, x1 + 960, y1 + 960), 10, 0.0)
    edge = _item("edge", (x1, y0, x1 + 960, y1), 11, 0.0)
    assert _rank([corner]) == [] and _rank([corner, edge]) == []
    inside = _item("inside", _around(CHIP), 12, 5.0)
    assert [c.items[0].id for c in _rank([corner, edge, inside])] == ["inside"]


def test_tiny_world_plan(tiny_world: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path) -> None:
    rec = load_recipe(str(tiny_recipe))
    plan = make_plan(parse_region(str(tiny_region)), rec, load_catalog(rec.catalog))
    counts = plan.counts()
    assert set(counts) == {"sentinel-2-l2a", "landsat-8-c2-l2", "aerial", "esa-worldcover"}
    assert all(c.chips == 4 and c.planned == 4 for c in counts.values())
    assert counts["landsat-8-c2-l2"].items == 3  # landsat-9 and the 70%-cloud date filtered out
    assert counts["aerial"].mosaic == 4  # 960 m chips straddle the 1 km aerial tiles
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


def _plan(tiny_recipe: Path, tiny_region: Path):
    rec = load_recipe(str(tiny_recipe))
    return make_plan(parse_region(str(tiny_region)), rec, load_catalog(rec.catalog))


def test_plan_file_round_trips(tiny_world: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path) -> None:
    from msc_france.plan import read_plan

    plan = _plan(tiny_recipe, tiny_region)
    plan.write(tmp_path / "p.parquet")
    back = read_plan(tmp_path / "p.parquet")
    assert [c.id for c in back.chips] == [c.id for c in plan.chips]
    assert back.recipe == plan.recipe and back.catalog == plan.catalog and back.gsds == plan.gsds
    assert back.region.name == plan.region.name and back.region.geometry.equals(plan.region.geometry)
    assert set(back.candidates) == set(plan.candidates)
    for key, cands in plan.candidates.items():
        got = back.candidates[key]
        assert [[i.id for i in c.items] for c in got] == [[i.id for i in c.items] for c in cands]
        assert [c.acquired for c in got] == [c.acquired for c in cands]
        assert all(abs(a.coverage - b.coverage) < 1e-6 for a, b in zip(got, cands, strict=True))
        assert [i.to_dict() for c in got for i in c.items] == [i.to_dict() for c in cands for i in c.items]


def test_build_follows_the_plan_file(tiny_world: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path,
                                     tiny_store: Path) -> None:
    """An edited plan is what gets built: chips removed from the file are not built, and a chip
    whose first candidate was deleted is read from the next one.
    """
    import pyarrow.parquet as pq
    import zarr

    from msc_france.cli import main

    plan = _plan(tiny_recipe, tiny_region)
    plan.write(tmp_path / "p.parquet")
    # Unedited: the same store as building the region (the tiny_store fixture), chip for chip.
    assert main(["build", "--plan", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "a.zarr"), "--quiet"]) == 0
    a, ref = zarr.open_group(str(tmp_path / "a.zarr"), mode="r"), zarr.open_group(str(tiny_store), mode="r")
    assert list(a["chip_id"][:]) == list(ref["chip_id"][:])
    for g in ("sentinel-2-l2a", "aerial"):
        np.testing.assert_array_equal(a[g]["image"][:], ref[g]["image"][:])
    # Edited with pyarrow (keeping the file's metadata): two chips kept; one S2 first choice deleted.
    table = pq.read_table(tmp_path / "p.parquet")
    rows = table.to_pandas()
    keep_chips = sorted(rows["chip_id"].unique())[:2]
    s2 = rows[(rows.chip_id == keep_chips[0]) & (rows.sensor == "sentinel-2-l2a")].sort_values("rank")
    assert len(s2) >= 2, "the tiny world offers several S2 acquisitions per chip"
    drop = (rows.chip_id == keep_chips[0]) & (rows.sensor == "sentinel-2-l2a") & (rows["rank"] == s2["rank"].iloc[0])
    mask = rows.chip_id.isin(keep_chips) & ~drop
    import pyarrow as pa

    pq.write_table(table.filter(pa.array(mask.to_numpy())), tmp_path / "edited.parquet")
    assert main(["build", "--plan", str(tmp_path / "edited.parquet"), "--out", str(tmp_path / "b.zarr"),
                 "--quiet"]) == 0
    idx = gpd.read_parquet(tmp_path / "b.zarr" / "index.parquet").set_index("chip_id")
    assert sorted(idx.index) == keep_chips
    second = s2["item_ids"].iloc[1].split(",")
    assert list(idx.loc[keep_chips[0], "item_ids_sentinel_2_l2a"]) == second


def test_build_refuses_plan_with_region(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from msc_france.cli import main

    (tmp_path / "p.parquet").write_bytes(b"PAR1 not really")
    assert main(["build", "--plan", str(tmp_path / "p.parquet"), "--region", "demo", "--out", str(tmp_path / "s")]) == 2
    assert "drop --region" in capsys.readouterr().err
    assert main(["build", "--plan", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'p.parquet'} is not a plan file") and "\n" not in err
    assert not (tmp_path / "s").exists()
