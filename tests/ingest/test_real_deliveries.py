"""`catalog ingest` on real deliveries (../shared/realdata) and their sub-folders alone: every file
registered rightly, or refused with its reason; never one product's file under another's name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest

from msc_france.cli import main
from tests.helpers import realdata


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_irc_folder_alone_is_never_registered_as_rgb(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The folder given to ingest names the product too: DELIVERY/irc holds IRC tiles only."""
    code = main(["catalog", "ingest", str(realdata("f5", "irc")), "--out", str(tmp_path / "c"), "--datetime",
                 "2021-07-01"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "IRC tile without its RVB partner" in line
    assert not (tmp_path / "c" / "catalog.json").exists()


def test_a_whole_delivery_pairs_rgb_and_irc(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["catalog", "ingest", str(realdata("f5")), "--out", str(tmp_path / "c"), "--datetime", "2021-07-01"])
    out = capsys.readouterr()
    assert code == 0, out.err
    items = list(pystac.Catalog.from_file(str(tmp_path / "c" / "catalog.json")).get_items(recursive=True))
    assert items and all(set(i.assets) == {"rgb", "irc"} for i in items)
    for i in items:  # the asset called rgb is the file from rgb/, the one called irc from irc/
        assert "/rgb/" in i.assets["rgb"].href and "/irc/" in i.assets["irc"].href
    assert "product bd-ortho (no SAFE, Theia or SPOT marker" in out.out


def test_a_safe_without_its_metadata_is_never_read_as_aerial(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A SAFE folder lacking MTD_MSIL2A.xml is recognised by its file names, not taken for BD ORTHO."""
    code = main(["catalog", "ingest", str(realdata("o1")), "--out", str(tmp_path / "c"), "--datetime", "2022-10-05"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "no s2-safe item" in line and "Sentinel-2 SAFE file names" in line
    assert not (tmp_path / "c" / "catalog.json").exists()


@pytest.mark.parametrize("folder", ["o1_safe", "theia"])
def test_bd_ortho_refuses_what_a_bd_ortho_tile_cannot_be(folder: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Forced to BD ORTHO, UTM Sentinel-2 files are refused with the reason (not Lambert-93)."""
    code = main(["catalog", "ingest", str(realdata(folder)), "--product", "bd-ortho", "--out", str(tmp_path / "c"),
                 "--datetime", "2022-10-05"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "is not Lambert-93 (EPSG:2154): not a BD ORTHO tile" in line
    assert not (tmp_path / "c" / "catalog.json").exists()


def test_ign_wkt_without_authority_is_lambert93(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """f1's CRS is an authority-less Lambert-93 WKT: still a BD ORTHO tile."""
    code = main(["catalog", "ingest", str(realdata("f1")), "--out", str(tmp_path / "c"), "--datetime", "2021-07-01"])
    capsys.readouterr()
    assert code == 0
    cat = json.loads((tmp_path / "c" / "catalog.json").read_text())
    assert cat["type"] == "Catalog"
    items = list(pystac.Catalog.from_file(str(tmp_path / "c" / "catalog.json")).get_items(recursive=True))
    assert len(items) == 1 and set(items[0].assets) == {"rgb", "irc"}


def test_a_renamed_theia_folder_is_read_from_its_file_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The real Theia crop sits in a folder called ``theia``: the product id comes from the band
    files' names; the MASKS/ sub-folder alone is refused with the reason.
    """
    code = main(["catalog", "ingest", str(realdata("theia")), "--out", str(tmp_path / "c")])
    out = capsys.readouterr()
    assert code == 0, out.err
    (item,) = pystac.Catalog.from_file(str(tmp_path / "c" / "catalog.json")).get_items(recursive=True)
    assert item.id == "SENTINEL2B_20181023-105107-455_L2A_T30TYP_D_V1-9"
    assert set(item.assets) == {"B2", "B3", "B4", "B8", "CLM", "EDG", "SAT"}
    assert item.datetime.isoformat() == "2018-10-23T10:51:07.455000+00:00"
    code = main(["catalog", "ingest", str(realdata("theia", "MASKS")), "--product", "theia",
                 "--out", str(tmp_path / "m")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "not inside a Theia product folder" in line


# --------------------------------------------------------------------------- generated products


def test_a_complete_product_exits_0_with_its_unused_files_listed(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """A SAFE's and a Theia product's own other files (TCI, AOT, 20 m bands) are "not used", exit 0;
    a stray file beside the products is "skipped", exit 6.
    """
    import datetime as dt

    from tests.real_products import _write, safe_product, theia_product

    when = dt.datetime(2021, 6, 14, 10, 56, 29, tzinfo=dt.UTC)
    fx = safe_product(tmp_path / "dl", when, 500000, 4800000)
    gran = next((fx.path / "GRANULE").iterdir()) / "IMG_DATA"
    import numpy as np
    from affine import Affine

    for name in ("R10m/T30TXQ_20210614T105629_TCI_10m.jp2", "R20m/T30TXQ_20210614T105629_AOT_20m.jp2"):
        _write(gran / name, np.ones((1, 8, 8), np.uint8), fx.crs, Affine(10, 0, 500000, 0, -10, 4800000),
               driver="JP2OpenJPEG")
    code = main(["catalog", "ingest", str(tmp_path / "dl"), "--out", str(tmp_path / "c")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "not used" in out.out and "TCI_10m.jp2" in out.out and "AOT_20m.jp2" in out.out and not out.err
    theia_product(tmp_path / "th", when, 500000, 4800000)  # has a FRE_B11 (20 m) and SRE bands
    code = main(["catalog", "ingest", str(tmp_path / "th"), "--out", str(tmp_path / "t")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "FRE_B11.tif" in out.out and "SRE_B2.tif" in out.out and not out.err
    _write(tmp_path / "th" / "stray.tif", np.ones((1, 8, 8), np.uint8), fx.crs, Affine(10, 0, 500000, 0, -10, 4800000))
    code = main(["catalog", "ingest", str(tmp_path / "th"), "--out", str(tmp_path / "t2")])
    err = capsys.readouterr().err
    assert code == 6 and "skipped" in err and "stray.tif: not inside a Theia product folder" in err


def test_one_unreadable_band_skips_its_product_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import datetime as dt

    from tests.real_products import safe_product

    good = safe_product(tmp_path / "dl", dt.datetime(2021, 6, 14, 10, 56, 29, tzinfo=dt.UTC), 500000, 4800000)
    bad = safe_product(tmp_path / "dl", dt.datetime(2021, 6, 19, 10, 56, 29, tzinfo=dt.UTC), 500000, 4800000)
    broken = next(bad.path.rglob("*_B03_10m.jp2"))
    broken.write_bytes(b"not a jpeg 2000")
    code = main(["catalog", "ingest", str(tmp_path / "dl"), "--out", str(tmp_path / "c")])
    cap = capsys.readouterr()
    assert code == 6 and "1 items" in cap.out
    assert f"skipped {bad.path}: SAFE product not registered" in cap.err and broken.name in cap.err
    (item,) = pystac.Catalog.from_file(str(tmp_path / "c" / "catalog.json")).get_items(recursive=True)
    assert item.id == good.path.name[: -len(".SAFE")]


def test_symlinked_folders_are_followed_and_loops_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.real_products import bdortho_tile

    real = tmp_path / "store" / "2021"
    bdortho_tile(real / "31-2021-0565-6272-LA93-0M50-RVB.tif", 565000, 6272000, 32)
    delivery = tmp_path / "delivery"
    delivery.mkdir()
    (delivery / "linked").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(real, target_is_directory=True)  # a folder that contains itself
    code = main(["catalog", "ingest", str(delivery), "--out", str(tmp_path / "c"), "--datetime", "2021-07-01"])
    cap = capsys.readouterr()
    assert code == 6 and "1 items (1 files)" in cap.out
    assert "loop: folder already read as" in cap.err


def test_an_impossible_theia_date_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import datetime as dt

    from tests.real_products import theia_product

    fx = theia_product(tmp_path / "dl", dt.datetime(2021, 6, 14, 10, 56, 29, tzinfo=dt.UTC), 500000, 4800000)
    wrong = fx.path.with_name(fx.path.name.replace("20210614", "20211340"))
    fx.path.rename(wrong)
    for f in wrong.rglob("*.tif"):
        f.rename(f.with_name(f.name.replace("20210614", "20211340")))
    code = main(["catalog", "ingest", str(tmp_path / "dl"), "--out", str(tmp_path / "c")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "impossible acquisition date and time 20211340-105629" in line


def test_a_garbage_date_in_a_safe_skips_that_product(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import datetime as dt

    from tests.real_products import safe_product

    good = safe_product(tmp_path / "dl", dt.datetime(2021, 6, 14, 10, 56, 29, tzinfo=dt.UTC), 500000, 4800000)
    bad = safe_product(tmp_path / "dl", dt.datetime(2021, 6, 19, 10, 56, 29, tzinfo=dt.UTC), 500000, 4800000)
    mtd = bad.path / "MTD_MSIL2A.xml"
    text = mtd.read_text()
    start = text.index("<PRODUCT_START_TIME>") + len("<PRODUCT_START_TIME>")
    mtd.write_text(text[:start] + "2021-13-45Tgarbage" + text[text.index("</PRODUCT_START_TIME>"):])
    code = main(["catalog", "ingest", str(tmp_path / "dl"), "--out", str(tmp_path / "c")])
    cap = capsys.readouterr()
    assert code == 6 and "1 items" in cap.out
    assert "MTD_MSIL2A.xml has an unreadable PRODUCT_START_TIME '2021-13-45Tgarbage'" in cap.err
    (item,) = pystac.Catalog.from_file(str(tmp_path / "c" / "catalog.json")).get_items(recursive=True)
    assert item.id == good.path.name[: -len(".SAFE")]


@pytest.mark.parametrize("target", ["..", "/", "parent-abs", "grandparent"])
def test_links_that_lead_above_the_folder_are_reported_not_walked(tmp_path: Path, target: str,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """``loop -> ..`` (or to /, or to any folder holding the delivery) would catalog the files beside
    and above it: reported, not walked; the files beside the delivery stay out of the catalog.
    """
    from tests.real_products import bdortho_tile

    base = tmp_path / "home" / "user"
    delivery = base / "delivery"
    bdortho_tile(delivery / "31-2021-0565-6272-LA93-0M50-RVB.tif", 565000, 6272000, 32)
    bdortho_tile(base / "31-2021-0566-6272-LA93-0M50-RVB.tif", 566000, 6272000, 32)  # beside it
    bdortho_tile(tmp_path / "31-2021-0567-6272-LA93-0M50-RVB.tif", 567000, 6272000, 32)  # above it
    link = {"..": "..", "/": "/", "parent-abs": str(base), "grandparent": str(tmp_path)}[target]
    (delivery / "up").symlink_to(link, target_is_directory=True)
    code = main(["catalog", "ingest", str(delivery), "--out", str(tmp_path / "c"), "--datetime", "2021-07-01"])
    cap = capsys.readouterr()
    assert code == 6 and "1 items (1 files)" in cap.out
    assert "up: a link to" in cap.err and "contains the ingested folder: not walked" in cap.err
    written = " ".join(p.read_text() for p in (tmp_path / "c").rglob("*.json"))
    assert "0565-6272" in written and "0566-6272" not in written and "0567-6272" not in written


@pytest.mark.parametrize("res_m, want", [(1.5, "spot-pms"), (6.0, "spot-ms")])
def test_spot_in_a_geographic_crs_gets_its_gsd_in_metres(tmp_path: Path, res_m: float, want: str) -> None:
    """A SPOT-6/7 ortho delivered in WGS84 (EPSG:4326) at 43.6 N: its GSD is measured in metres along
    the grid (pyproj's geodesic, here computed independently), so a 6 m MS file is filed as MS and a
    1.5 m one as pansharpened; before, degrees (1.4e-05) were compared with 4 m.
    """
    import json

    import numpy as np
    import rasterio
    from affine import Affine
    from pyproj import Geod

    lat = 43.6
    deg = res_m / 111_320.0  # about res_m along a meridian; the test measures the true value below
    f = tmp_path / "dl" / "SPOT7_20210614_ORTHO.tif"
    f.parent.mkdir()
    with rasterio.open(f, "w", driver="GTiff", width=40, height=40, count=4, dtype="uint16", crs="EPSG:4326",
                       transform=Affine(deg, 0, 1.4, 0, -deg, lat)) as dst:
        dst.write(np.full((4, 40, 40), 500, np.uint16))
        dst.descriptions = ("red", "green", "blue", "nir")
    assert main(["catalog", "ingest", str(tmp_path / "dl"), "--out", str(tmp_path / "c"), "--product", "spot"]) == 0
    item = json.loads(next((tmp_path / "c").rglob("SPOT7_20210614_ORTHO.json")).read_text())
    g = Geod(ellps="WGS84")
    clat = lat - 20 * deg
    along_x = g.inv(1.4 + 20 * deg, clat, 1.4 + 21 * deg, clat)[2]
    along_y = g.inv(1.4 + 20 * deg, clat, 1.4 + 20 * deg, clat - deg)[2]
    assert item["properties"]["gsd"] == pytest.approx((along_x + along_y) / 2, rel=1e-3)
    assert 0.5 * res_m < item["properties"]["gsd"] < 1.5 * res_m
    assert item["properties"]["msc_france:product"] == want


def test_refusals_say_what_the_files_look_like(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A SPOT file without SPOT in its name read as auto: the refusal points at --layout spot, not
    only "not a BD ORTHO tile"; a Sentinel-2 L1C folder is named as L1C, which is not supported.
    """
    from tests.real_products import spot_product

    spot_product(tmp_path / "a" / "scene_20210614_ortho.tif", 565000, 6272000, 32, 1.5, 4, "uint16")
    code = main(["catalog", "ingest", str(tmp_path / "a"), "--out", str(tmp_path / "ca")])
    err = capsys.readouterr().err
    assert code == 2 and "look like a SPOT-6/7 ortho: pass --layout spot" in err
    l1c = tmp_path / "S2A_MSIL1C_20210614T105031_N0300_R051_T31TCJ_20210614T130000.SAFE"
    img = l1c / "GRANULE" / "L1C_T31TCJ_A031000_20210614T105031" / "IMG_DATA"
    img.mkdir(parents=True)
    (img / "T31TCJ_20210614T105031_B02.jp2").write_bytes(b"\x00" * 16)  # L1C names: no resolution suffix
    (l1c / "MTD_MSIL1C.xml").write_text("<xml/>")
    code = main(["catalog", "ingest", str(l1c), "--out", str(tmp_path / "cl")])
    err = capsys.readouterr().err
    assert code == 2 and "Sentinel-2 Level-1C product (top of atmosphere): not supported" in err
    assert err.count("\n") == 1
