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
