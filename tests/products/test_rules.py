"""Product rules against hand-computed cases: baselines, mask bits, radiometry declarations."""

from __future__ import annotations

import numpy as np
import pytest

from msc_france.config import load_catalog
from msc_france.crs import identify_epsg
from msc_france.errors import SourceError
from msc_france.products import rules_for
from msc_france.products.sentinel2 import processing_baseline
from tests.real_products import IGN_WKT_TOWGS84, IGN_WKT_WGS84


def _s2(props: dict, iid: str = "S2B_MSIL2A_20210614T105619_R094_T30TXQ_20210614T140000") -> dict:
    return {"id": iid, "properties": {"datetime": "2021-06-14T10:56:19Z", **props}, "assets": {
        k: {"href": f"https://example.com/{k}.tif"} for k in ("B02", "B03", "B04", "B08", "SCL")}}


@pytest.mark.parametrize(("props", "iid", "want"), [
    ({"s2:processing_baseline": "05.09"}, None, ("05.09", "s2:processing_baseline")),
    ({}, "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454", ("04.00", "product id")),
    ({"s2:product_uri": "S2A_MSIL2A_20190101T000000_N0211_R000_T31TCJ_20190101T000000.SAFE"}, None,
     ("02.11", "s2:product_uri")),
    ({"datetime": "2022-01-25T10:00:00Z"}, None, ("04.00", "acquisition date")),
    ({"datetime": "2022-01-24T10:00:00Z"}, None, ("02.14", "acquisition date")),
])
def test_baseline_without_the_property(props: dict, iid: str | None, want: tuple[str, str]) -> None:
    item = _s2(props) if iid is None else {**_s2(props), "id": iid}
    assert processing_baseline(item) == want


def test_s2_offset_recorded_with_its_source() -> None:
    spec = load_catalog("default").sensor("sentinel-2-l2a")
    item = {**_s2({}), "id": "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454"}
    parsed = rules_for("sentinel-2-l2a").parse(spec, item)
    a = parsed.assets[0]
    # rho = (DN - 1000) / 10000 -> scale 1e-4, offset -0.1
    assert a.scale == pytest.approx(1e-4) and a.offset == pytest.approx(-0.1)
    assert parsed.harmonization == "s2 baseline 04.00 (from product id): (DN -1000) / 10000"
    assert [m.type for m in parsed.masks] == ["scl"]


def test_mask_bits_hand_computed() -> None:
    scl = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    nodata, cloud = rules_for("sentinel-2-l2a").decode_mask("scl", scl)
    assert nodata.tolist() == [True] + [False] * 11
    assert np.flatnonzero(cloud).tolist() == [1, 3, 8, 9, 10]
    qa = np.array([1, 2, 4, 8, 16, 32, 64, 128, 0b0101_0100_0000, 21824])
    nodata, cloud = rules_for("landsat-c2-l2").decode_mask("qa_pixel", qa)
    assert nodata.tolist() == [True] + [False] * 9
    assert cloud.tolist() == [False, True, True, True, True, False, False, False, False, False]
    clm = np.array([0, 1, 2, 32, 255], np.uint8)
    t = rules_for("theia-l2a")
    assert t.decode_mask("maja-clm", clm)[1].tolist() == [False, True, True, True, True]
    assert not t.decode_mask("maja-clm", clm)[0].any()  # CLM never says "no data"
    assert t.decode_mask("maja-edg", clm)[0].tolist() == [False, True, True, True, True]
    with pytest.raises(SourceError, match="has no mask type 'scl'"):
        t.decode_mask("scl", clm)


def test_landsat_without_scale_is_refused() -> None:
    spec = load_catalog("default").sensor("landsat-8-c2-l2")
    item = {"id": "LC08_x", "properties": {"datetime": "2021-06-14T10:00:00Z"},
            "assets": {k: {"href": "/x.tif"} for k in ("blue", "green", "red", "nir08", "qa_pixel")}}
    with pytest.raises(SourceError, match="LC08_x asset 'blue' lacks raster:bands scale/offset"):
        rules_for("landsat-c2-l2").parse(spec, item)


def test_multiband_asset_without_band_names_is_refused() -> None:
    spec = load_catalog("local").sensor("spot")
    item = {"id": "SPOT", "properties": {"datetime": "2021-06-14T10:00:00Z"},
            "assets": {"image": {"href": "/x.tif", "eo:bands": [{"name": "b0"}, {"name": "b1"}]}}}
    with pytest.raises(SourceError, match="no band named 'red'"):
        rules_for("raster").parse(spec, item)


def test_unknown_product_or_mask_type_in_a_sensor_yaml() -> None:
    """The schema names no product; the product modules check the specs that name them."""
    from msc_france.config import SensorSpec
    from msc_france.errors import BadInputError
    from msc_france.products import check_sensor

    base = dict(name="x", title="x", source={"type": "static", "path": "p", "collection": "c"}, native_gsd=10,
                default_gsd=10, dtype="uint16", bands=[{"name": "b", "asset": "a"}])
    with pytest.raises(BadInputError, match="sensor 'x': unknown product 'safe'"):
        check_sensor(SensorSpec(**base, product="safe"))
    with pytest.raises(BadInputError, match="product 'theia-l2a' has no mask type \\['scl'\\]"):
        check_sensor(SensorSpec(**base, product="theia-l2a", masks=[{"asset": "CLM", "type": "scl"}]))
    assert check_sensor(SensorSpec(**base, product="theia-l2a", masks=[{"asset": "CLM", "type": "maja-clm"}])).name \
        == "theia-l2a"
    with pytest.raises(ValueError, match="does not fit uint16"):
        SensorSpec(**base, valid_range=(0, 70000))


def test_config_imports_no_product_and_products_no_source() -> None:
    """The layers: config (schema) <- products <- sources; urls below products. Checked in a fresh
    interpreter, so nothing imported by other tests hides a cycle.
    """
    import subprocess
    import sys

    code = ("import sys, msc_france.config; bad = [m for m in sys.modules if m.startswith(('msc_france.products', "
            "'msc_france.sources'))]; import msc_france.products; bad += [m for m in sys.modules if "
            "m.startswith('msc_france.sources')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_lambert93_identified_by_equivalence() -> None:
    assert identify_epsg(IGN_WKT_WGS84) == 2154  # neither GDAL nor PROJ name it
    assert identify_epsg(IGN_WKT_TOWGS84) == 2154
    moved = IGN_WKT_WGS84.replace('"false_northing",6600000', '"false_northing",6600010')
    assert identify_epsg(moved) is None  # 10 m off is another CRS
