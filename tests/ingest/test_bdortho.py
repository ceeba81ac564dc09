"""`catalog ingest` of IGN BD ORTHO deliveries laid out as users have them."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pystac.validation
import pytest
import rasterio
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from msc_france.cli import main
from msc_france.errors import BadInputError
from msc_france.ingest import ingest
from tests.real_products import IGN_WKT_TOWGS84, IGN_WKT_WGS84, bdortho_tile


def _items(cat: Path) -> dict[str, pystac.Item]:
    return {i.id: i for i in pystac.Catalog.from_file(str(cat / "catalog.json")).get_items(recursive=True)}


def _core_valid(item: pystac.Item) -> None:
    """Validate against the core STAC item schema pystac ships (extension schemas need a network)."""
    d = item.to_dict(include_self_link=False)
    d["stac_extensions"] = []
    pystac.validation.validate_dict(d)


def test_ign_delivery_names_and_wkts(tmp_path: Path) -> None:
    """IGN names: RVB tiles carry no token, IRC tiles carry -IRC-; both real WKT forms; JP2 + TIF."""
    d = tmp_path / "BDORTHO_2-0_RVB-0M50_JP2-E080_LAMB93_D031_2021-01-01"
    bdortho_tile(d / "31-2021-0565-6272-LA93-0M50-E080.jp2", 565000, 6272000, 64, driver="JP2OpenJPEG")
    bdortho_tile(d / "31-2021-0565-6272-LA93-0M50-IRC-E080.jp2", 565000, 6272000, 64, driver="JP2OpenJPEG")
    bdortho_tile(d / "31-2021-0565-6271-LA93-0M50-E080.tif", 565000, 6271968, 64, wkt=IGN_WKT_TOWGS84)
    bdortho_tile(d / "31-2021-0565-6271-LA93-0M50-IRC-E080.tif", 565000, 6271968, 64, wkt=IGN_WKT_TOWGS84)
    # The first WKT is one that neither GDAL's nor PROJ's identification recognises.
    with rasterio.open(d / "31-2021-0565-6272-LA93-0M50-E080.jp2") as src:
        assert src.crs.to_epsg() is None
    r = ingest(tmp_path, tmp_path / "cat")
    assert (r.items, r.files_used, r.skipped) == (2, 4, [])
    items = _items(tmp_path / "cat")
    assert set(items) == {"31-2021-0565-6272-LA93-0M50-E080", "31-2021-0565-6271-LA93-0M50-E080"}
    for it in items.values():
        assert set(it.assets) == {"rgb", "irc"}
        assert ProjectionExtension.ext(it).code == "EPSG:2154"
        assert ProjectionExtension.has_extension(it) and RasterExtension.has_extension(it)
        assert EOExtension.has_extension(it)
        assert [b["name"] for b in it.assets["irc"].extra_fields["eo:bands"]] == ["nir", "red", "green"]
        assert it.assets["rgb"].extra_fields["raster:bands"][0]["nodata"] == 255
        _core_valid(it)
    # The footprint (WGS84) brackets the tile: 565000-565032 m E is ~1.44 deg E near Toulouse.
    bbox = items["31-2021-0565-6272-LA93-0M50-E080"].bbox
    assert 1.0 < bbox[0] < bbox[2] < 2.0 and 43.0 < bbox[1] < bbox[3] < 44.0


@pytest.mark.parametrize("layout", ["folders", "suffix", "prefix-upper"])
def test_user_extract_layouts(tmp_path: Path, layout: str) -> None:
    """rgb/ + irc/ folders with identical names, `_rgb`/`_irc` suffixes, `RGB_`/`IRC_` prefixes."""
    src = tmp_path / "extract"
    for k, y in enumerate((6272000, 6271968)):
        stem = f"tile_{k}"
        paths = {
            "folders": (src / "rgb" / f"{stem}.tif", src / "irc" / f"{stem}.tif"),
            "suffix": (src / f"{stem}_rgb.tif", src / f"{stem}_irc.tif"),
            "prefix-upper": (src / f"RGB_{stem}.tif", src / f"IRC_{stem}.tif"),
        }[layout]
        bdortho_tile(paths[0], 565000, y, 64, nodata=None)
        bdortho_tile(paths[1], 565000, y, 64, nodata=None)
    assert main(["catalog", "ingest", str(src), "--out", str(tmp_path / "cat"), "--datetime", "2021-06-01"]) == 0
    items = _items(tmp_path / "cat")
    assert len(items) == 2 and all(set(i.assets) == {"rgb", "irc"} for i in items.values())
    assert all(i.datetime.date().isoformat() == "2021-06-01" for i in items.values())


def test_every_file_is_used_or_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "d"
    bdortho_tile(src / "31-2021-0565-6272-LA93-0M50-E080.tif", 565000, 6272000, 32)
    bdortho_tile(src / "31-2021-0565-6272-LA93-0M50-IRC-E080.tif", 565000, 6272000, 32)
    bdortho_tile(src / "31-2021-0566-6272-LA93-0M50-IRC-E080.tif", 566000, 6272000, 32)  # no RVB partner
    bdortho_tile(src / "31-2021-0567-6272-LA93-0M50-E080.tif", 567000, 6272000, 32, bands=1)  # 1 band
    (src / "31-2021-0568-6272-LA93-0M50-E080.tif").write_bytes(b"not a tiff")
    rc = main(["catalog", "ingest", str(src), "--out", str(tmp_path / "cat")])
    out, err = capsys.readouterr()
    assert rc == 6, err
    assert "1 items (2 files) written" in out
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 3
    assert any("0566" in s and "IRC tile without its RVB partner" in s for s in skipped)
    assert any("0567" in s and "1 band(s)" in s for s in skipped)
    assert any("0568" in s and "cannot read" in s for s in skipped)
    assert err.strip().splitlines()[-1] == "error: 3 file(s) skipped (listed above); the catalog holds the rest"
    assert len(_items(tmp_path / "cat")) == 1


def test_nothing_pairable_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "d"
    bdortho_tile(src / "a-IRC.tif", 565000, 6272000, 16)
    with pytest.raises(BadInputError, match=r"no bd-ortho item could be made .*IRC tile without its RVB partner"):
        ingest(src, tmp_path / "cat")
    assert not (tmp_path / "cat").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no .jp2/.tif/.tiff files"):
        ingest(tmp_path / "empty", tmp_path / "cat")
    with pytest.raises(BadInputError, match="bad --datetime"):
        ingest(src, tmp_path / "cat", when="July")


def test_catalog_json_declares_projection_code_or_wkt2(tmp_path: Path) -> None:
    """A CRS with no EPSG equivalent is kept as proj:wkt2 (the warp needs the CRS, not a code);
    such a file cannot be a BD ORTHO tile, which is Lambert-93.
    """
    odd = IGN_WKT_WGS84.replace("PARAMETER[\"false_easting\",700000]", "PARAMETER[\"false_easting\",500000]")
    bdortho_tile(tmp_path / "d" / "x.tif", 365000, 6272000, 16, wkt=odd)
    with pytest.raises(BadInputError, match="x.tif: CRS not identified as an EPSG CRS is not Lambert-93"):
        ingest(tmp_path / "d", tmp_path / "bd", when="2021-01-01")
    (tmp_path / "d" / "x.tif").rename(tmp_path / "d" / "SPOT7_x.tif")
    ingest(tmp_path / "d", tmp_path / "cat", when="2021-01-01", band_order=["red", "green", "blue"])
    it = next(iter(_items(tmp_path / "cat").values()))
    d = json.loads(json.dumps(it.to_dict()))
    assert d["properties"]["proj:code"] is None and "Lambert" in d["properties"]["proj:wkt2"]
