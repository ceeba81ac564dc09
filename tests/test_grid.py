"""The Lambert-93 chip grid."""

from __future__ import annotations

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import box

from msc_france.errors import BadInputError
from msc_france.grid import Chip, chip_at, chips_in, pixels_per_chip

SIZES = st.sampled_from([480, 960, 1920, 3840])
XS = st.floats(100_000, 1_250_000, allow_nan=False)
YS = st.floats(6_040_000, 7_120_000, allow_nan=False)


@given(XS, YS, SIZES)
def test_id_roundtrip_and_containment(x: float, y: float, size: int) -> None:
    c = chip_at(x, y, size)
    assert Chip.from_id(c.id) == c
    minx, miny, maxx, maxy = c.bounds
    assert minx <= x < maxx and miny <= y < maxy
    assert maxx - minx == size and maxy - miny == size
    assert minx % size == 0 and miny % size == 0  # anchored at the CRS origin


@given(XS, YS, SIZES)
def test_ids_are_stable_and_readable(x: float, y: float, size: int) -> None:
    c = chip_at(x, y, size)
    assert c.id == chip_at(x, y, size).id
    assert c.id == f"{size}m-E{int(c.bounds[0]):07d}-N{int(c.bounds[1]):07d}"


@settings(max_examples=40, deadline=None)
@given(XS, YS, st.floats(100, 9000), st.floats(100, 9000), SIZES)
def test_chips_tile_the_region(x: float, y: float, w: float, h: float, size: int) -> None:
    region = box(x, y, x + w, y + h)
    chips = chips_in(region, size)
    polys = [c.polygon for c in chips]
    union = shapely.union_all(polys)
    assert union.contains(region.buffer(-0.01))  # covered, but for slivers thinner than 1 cm
    assert union.area == pytest.approx(sum(p.area for p in polys))  # no overlaps
    assert len({c.id for c in chips}) == len(chips)
    assert all(p.intersection(region.buffer(-0.01)).area > 0 for p in polys)  # no chip merely touches


def test_touching_chip_is_excluded() -> None:
    chips = chips_in(box(1920, 1920, 3840, 3840), 1920)
    assert [c.id for c in chips] == ["1920m-E0001920-N0001920"]


@pytest.mark.parametrize("gsd,n", [(10, 192), (30, 64), (1.5, 1280), (0.2, 9600)])
def test_pixel_grid_is_exact(gsd: float, n: int) -> None:
    c = Chip(1920, 292, 3266)
    g = c.pixel_grid(gsd)
    assert g.shape == (n, n)
    assert g.bounds == pytest.approx(c.bounds)
    assert g.crs == "EPSG:2154"
    x, y = g.xy(0, 0)
    assert (x, y) == pytest.approx((c.bounds[0] + gsd / 2, c.bounds[3] - gsd / 2))


def test_non_multiple_refused() -> None:
    with pytest.raises(BadInputError, match="not an integer multiple"):
        pixels_per_chip(1000, 30)


@pytest.mark.parametrize("bad", ["1920m-E12-N34", "abc", "1920m-E0000100-N0000000"])
def test_malformed_ids(bad: str) -> None:
    with pytest.raises(BadInputError):
        Chip.from_id(bad)
