"""The demo world's version 6 nuisances, on the generator's own functions (no world written)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from affine import Affine

from msc_france.config import DemoWorldSpec
from msc_france.grid import PixelGrid
from msc_france.sources.demo_world import SHADOW_M, Feature, Renderer, aerial_texture, phenology


def test_parcels_change_colour_differently_between_dates() -> None:
    classes = np.array([3, 3, 3, 4, 4])
    phases = np.array([-30.0, 0.0, 30.0, 160.0, 200.0])
    a = phenology(classes, dt.date(2021, 6, 22), phases)
    b = phenology(classes, dt.date(2021, 7, 9), phases)
    ratio = (b / a)[:, :3]  # the visible bands, what RGB sensors see
    # Were the change one gain for the whole place, a per-tile z-score would undo it: it is not.
    assert np.ptp(ratio[:3, 0]) > 0.3 and np.ptp(ratio[:, 2]) > 0.3
    # Early in the season too (the previous world's RGB did not change before July).
    early = phenology(classes, dt.date(2021, 5, 3), phases)[:3, :3] / phenology(classes, dt.date(2021, 5, 28),
                                                                                phases)[:3, :3]
    assert np.abs(early - 1).max() > 0.2
    # Without phases every parcel follows one calendar.
    same = phenology(np.array([3, 3]), dt.date(2021, 6, 22))
    assert np.array_equal(same[0], same[1])


def test_aerial_texture_is_aerial_scale_and_casts_shadows() -> None:
    from shapely.geometry import box

    feats = [Feature(box(0, 0, 60, 60), 3, (0.04, 0.08, 0.05, 0.35)),  # crops
             Feature(box(0, 60, 60, 120), 2, (0.03, 0.06, 0.03, 0.3)),  # forest
             Feature(box(20, 20, 30, 30), 8, (0.14, 0.12, 0.13, 0.2))]  # a building in the field
    r = Renderer(feats)
    gsd = 0.5
    g = PixelGrid("EPSG:2154", Affine(gsd, 0, 0, 0, -gsd, 120), 240, 120)
    ids = r.fine_ids(g, 1)
    tex = aerial_texture(r, ids, g, np.random.default_rng(0))
    cls = r.classes[ids]
    crops, forest = (cls == 3), (cls == 2)
    assert abs(tex[forest].mean() - 1) < 0.05 and tex[forest].std() > 0.2  # crowns, about 1 on average
    assert abs(tex[crops].mean() - 1) < 0.1 and tex[crops].std() > 0.1  # rows
    # Rows are 3.5 m apart: averaged over a 10 m pixel they nearly vanish.
    field = tex[120:160, :120]  # the north of the crop parcel, away from the building and its shadow
    block = field.reshape(2, 20, 6, 20).mean(axis=(1, 3))
    assert field.std() > 0.1 and block.std() < 0.02
    # The shadow falls north-west of the building: rows above it, columns left of it.
    rows, cols = np.nonzero(cls == 8)
    dr, dc = (int(round(m / gsd)) for m in SHADOW_M)
    r0, c0 = rows.min() - dr, cols.min() - dc
    assert tex[r0, c0] < 0.6 and tex[rows.max() + 2, cols.max() + 2] > 0.6


def test_landsat_dates_come_with_their_clouds() -> None:
    base = {"bounds_l93": [0, 0, 1000, 1000], "dates": ["2021-05-01"], "cloud_cover": [0.1],
            "aerial_date": "2021-06-01"}
    DemoWorldSpec.model_validate({**base, "landsat_dates": ["2021-05-09"], "landsat_cloud_cover": [0.2]})
    with pytest.raises(ValueError, match="landsat_dates and landsat_cloud_cover"):
        DemoWorldSpec.model_validate({**base, "landsat_dates": ["2021-05-09"]})
    with pytest.raises(ValueError, match="landsat_dates and landsat_cloud_cover"):
        DemoWorldSpec.model_validate({**base, "landsat_dates": ["2021-05-09"], "landsat_cloud_cover": [0.2, 0.3]})
