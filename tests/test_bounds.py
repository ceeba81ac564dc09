"""Resource bounds and refusals at the edges: small crafted inputs never take unbounded memory or
time, special files are never opened as configuration, names never forge output lines or paths,
and nothing the project did not write is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from affine import Affine

from msc_france.cli import main
from msc_france.config import SourceSpec
from msc_france.errors import BadInputError, StoreError
from msc_france.paths import catalogs_dir, pipelines_dir
from tests.helpers import one_provider_yaml
from tests.real_products import bdortho_tile


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _l93_tif(path: Path, count: int, size: int, block: int | None = None, dtype: str = "uint8") -> Path:
    profile = {"driver": "GTiff", "width": size, "height": size, "count": count, "dtype": dtype,
               "crs": "EPSG:2154", "transform": Affine(1.0, 0, 570000, 0, -1.0, 6280000), "compress": "deflate"}
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.zeros((count, size, size), dtype))
    return path


# --------------------------------------------------------------------------- crafted source files

# Run in a fresh interpreter: its peak resident memory (VmHWM) is what the read took, nothing else.
_PEAK = textwrap.dedent("""
    import json, sys
    from affine import Affine
    from msc_france.builder.warp import ReadLimits, warp_asset
    from msc_france.errors import SourceError
    from msc_france.grid import PixelGrid
    from msc_france.sources.signing import make_signer

    def hwm():
        return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024

    grid = PixelGrid("EPSG:2154", Affine(4.0, 0, 570000, 0, -4.0, 6280000), 128, 128)
    import rasterio
    with rasterio.open(sys.argv[1]):  # GDAL's own start-up (about 16 MB) is not the read's
        pass
    before = hwm()
    try:
        warp_asset(sys.argv[1], make_signer("none"), grid, (1,), "bilinear", None,
                   limits=ReadLimits(max_block_bytes=int(sys.argv[2])))
        print(json.dumps({"error": None, "peak": hwm() - before}))
    except SourceError as e:
        print(json.dumps({"error": str(e), "peak": hwm() - before}))
""")


def _peak_read(path: Path, max_block_bytes: int = 256 * 2**20) -> dict:
    r = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(max_block_bytes)], capture_output=True,
                       text=True, timeout=120, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_file_declaring_thousands_of_bands_is_refused_before_reading(tmp_path: Path) -> None:
    f = _l93_tif(tmp_path / "bands.tif", count=2500, size=16)
    assert f.stat().st_size < 300_000  # a few hundred KB on disk, 2,500 bands declared
    got = _peak_read(f)
    assert got["error"] == f"{f} declares 2500 bands, more than the source's max_bands (64)"
    assert got["peak"] < 64 * 2**20, got  # measured: 2.5 GB before the bound


def test_a_file_with_one_huge_block_is_refused_before_reading(tmp_path: Path) -> None:
    # One 2,048-pixel tile of 4 bands: 16 MiB decoded from a few KB; the bound set to 4 MiB here
    # stands for the 256 MiB default against a 24,576-pixel tile.
    f = _l93_tif(tmp_path / "block.tif", count=4, size=2048, block=2048)
    assert f.stat().st_size < 200_000
    got = _peak_read(f, max_block_bytes=4 * 2**20)
    assert got["error"] == (f"{f}: one 2048 x 2048 block decodes to 16777216 bytes, more than the source's "
                            f"max_block_bytes (4194304)")
    assert got["peak"] < 8 * 2**20, got
    small = _l93_tif(tmp_path / "tiled.tif", count=4, size=2048, block=256)  # same pixels, small tiles
    assert _peak_read(small, max_block_bytes=4 * 2**20)["error"] is None


# --------------------------------------------------------------------------- item footprints


def _item(iid: str, coords: list[list[float]], href: str) -> dict:
    return {"type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": "sentinel-2-l2a",
            "geometry": {"type": "Polygon", "coordinates": [coords]}, "bbox": [1.2, 43.4, 1.5, 43.7],
            "properties": {"datetime": "2021-06-14T10:00:00Z", "eo:cloud_cover": 1.0},
            "links": [], "assets": {"B04": {"href": href}}}


def test_absurd_footprints_are_left_out_by_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from msc_france.sources.base import SearchQuery
    from msc_france.sources.static import StaticSource

    ok = [[1.2, 43.4], [1.5, 43.4], [1.5, 43.7], [1.2, 43.7], [1.2, 43.4]]
    huge = [[-1e6, -1e6], [1e6, -1e6], [1e6, 1e6], [-1e6, 1e6], [-1e6, -1e6]]
    nan = [[1.2, float("nan")], [1.5, 43.4], [1.5, 43.7], [1.2, 43.4]]
    wide = [[-10.0, 40.0], [15.0, 40.0], [15.0, 45.0], [-10.0, 45.0], [-10.0, 40.0]]
    feats = [_item(n, c, f"{tmp_path}/{n}.tif") for n, c in (("good", ok), ("huge", huge), ("nan", nan),
                                                              ("wide", wide))]
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    src = StaticSource(SourceSpec(type="static", collection="sentinel-2-l2a", path=str(path)), path=path)
    import datetime as dt

    q = SearchQuery("sentinel-2-l2a", (1.0, 43.0, 2.0, 44.0), dt.date(2021, 6, 1), dt.date(2021, 6, 30))
    with caplog.at_level("WARNING"):
        items = src.search(q)
    assert [it.id for it in items] == ["good"]
    text = caplog.text
    assert "item huge left out: footprint -1e+06,-1e+06,1e+06,1e+06 is outside longitude/latitude ranges" in text
    assert "item nan left out: footprint is not a valid geometry" in text
    assert "item wide left out: footprint spans 25 degrees, more than the source's max_item_extent_deg (20)" in text


# --------------------------------------------------------------------------- chip and store sizes


def test_a_chip_of_absurd_pixel_count_is_refused_before_any_search(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    rec = yaml.safe_load((pipelines_dir() / "demo.yaml").read_text())
    rec["sensors"]["aerial"]["gsd"] = 0.001  # a 1,920 m chip would be 1.92 million pixels wide
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    code = main(["plan", "--region", "toulouse", "--recipe", str(tmp_path / "r.yaml"), "--out",
                 str(tmp_path / "p.parquet")])
    err = _one_line(capsys.readouterr().err)
    assert code == BadInputError.exit_code
    assert err.startswith("error: aerial: a ") and "more than limits.max_chip_pixels (134217728)" in err
    assert not (tmp_path / "p.parquet").exists()


def test_array_metadata_claiming_more_chips_than_recorded(tiny_store: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, store)
    meta_file = store / "chip_id" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["shape"] = [10**12]
    meta_file.write_text(json.dumps(meta))
    consolidated = json.loads((store / "zarr.json").read_text())
    if "consolidated_metadata" in consolidated and consolidated["consolidated_metadata"]:
        consolidated["consolidated_metadata"]["metadata"]["chip_id"]["shape"] = [10**12]
        (store / "zarr.json").write_text(json.dumps(consolidated))
    for cmd in (["validate", str(store)], ["info", str(store)]):
        code = main(cmd)
        err = _one_line(capsys.readouterr().err)
        assert code == StoreError.exit_code
        assert "is damaged: chip_id holds 1000000000000 entries, its attributes record 4 chips" in err


# --------------------------------------------------------------------------- configuration files


def test_a_fifo_in_a_catalog_is_refused_not_waited_on(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    cat = tmp_path / "cat"
    shutil.copytree(catalogs_dir() / "default", cat)
    os.mkfifo(cat / "zz-pipe.yaml")
    r = subprocess.run([str(Path(sys.executable).parent / "msc-france"), "sensors", "--catalog", str(cat)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == BadInputError.exit_code
    assert _one_line(r.stderr) == f"error: not a regular file (a FIFO, socket or device): {cat / 'zz-pipe.yaml'}"


def test_a_latin1_recipe_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "r.yaml").write_bytes("name: vall\xe9e\n".encode("latin-1"))
    code = main(["plan", "--region", "toulouse", "--recipe", str(tmp_path / "r.yaml"), "--out",
                 str(tmp_path / "p.parquet")])
    assert code == BadInputError.exit_code
    assert _one_line(capsys.readouterr().err) == f"error: {tmp_path / 'r.yaml'}: not UTF-8 text (byte 10); save it as UTF-8"


@pytest.mark.parametrize("bad", ["../../outside", "a/b", "..", ".hidden", "x\ny"])
def test_collection_ids_that_would_be_paths_are_refused(bad: str, tmp_path: Path) -> None:
    spec = one_provider_yaml("default", "sentinel-2-l2a")
    spec["source"]["collection"] = bad
    cat = tmp_path / "cat"
    cat.mkdir()
    (cat / "sentinel-2-l2a.yaml").write_text(yaml.safe_dump(spec))
    from msc_france.config import load_catalog

    with pytest.raises(BadInputError, match="collection id .* is not allowed"):
        load_catalog(str(cat))


# --------------------------------------------------------------------------- names and outputs


def test_a_file_name_cannot_forge_an_error_line(tmp_path: Path) -> None:
    forged = tmp_path / "x\nerror: everything is fine\x1b[2J"
    r = subprocess.run([str(Path(sys.executable).parent / "msc-france"), "validate", str(forged)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == StoreError.exit_code
    line = _one_line(r.stderr)
    assert line.startswith("error: ") and "x\\nerror: everything is fine\\x1b[2J" in line


def _delivery(root: Path) -> Path:
    d = root / "BDORTHO_2-0_RVB-0M50_TIFF_LAMB93_D031_2021-01-01"
    bdortho_tile(d / "31-2021-0565-6272-LA93-0M50-E080.tif", 565000, 6272000, 32)
    return root


def test_ingest_never_overwrites_a_catalog_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _delivery(tmp_path / "src")
    mine = tmp_path / "my-catalog"
    pystac.Catalog("users-own", "a user's catalog").normalize_and_save(str(mine), pystac.CatalogType.SELF_CONTAINED)
    before = _hashes(mine)
    code = main(["catalog", "ingest", str(src), "--out", str(mine), "--datetime", "2021-06-01"])
    assert code == BadInputError.exit_code
    assert "already holds files that catalog ingest did not write (catalog.json)" in _one_line(capsys.readouterr().err)
    assert _hashes(mine) == before
    # Its own output it may replace.
    ours = tmp_path / "ours"
    assert main(["catalog", "ingest", str(src), "--out", str(ours), "--datetime", "2021-06-01"]) == 0
    assert main(["catalog", "ingest", str(src), "--out", str(ours), "--datetime", "2021-06-02"]) == 0
    capsys.readouterr()


def test_ingest_collection_that_is_a_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _delivery(tmp_path / "src")
    out = tmp_path / "deep" / "out"
    code = main(["catalog", "ingest", str(src), "--out", str(out), "--collection", "../../outside",
                 "--datetime", "2021-06-01"])
    assert code == BadInputError.exit_code
    assert "collection id '../../outside' is not allowed" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "outside").exists() and not out.exists()


def test_ingest_reports_a_file_name_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _delivery(tmp_path / "src")
    folder = src / "BDORTHO_2-0_RVB-0M50_TIFF_LAMB93_D031_2021-01-01"
    bdortho_tile(folder / "second.tif", 565000, 6271984, 32)
    os.rename(folder / "second.tif", os.fsencode(folder) + b"/31-2021-0565-6271-LA93-0M50-E080-\xff.tif")
    code = main(["catalog", "ingest", str(src), "--out", str(tmp_path / "out"), "--datetime", "2021-06-01"])
    cap = capsys.readouterr()
    assert code == 6  # a file left out is never "fine"
    assert "-E080-\\xff.tif: file name is not valid UTF-8 (a STAC href must be); rename it" in cap.err
    items = list(pystac.Catalog.from_file(str(tmp_path / "out" / "catalog.json")).get_items(recursive=True))
    assert [it.id for it in items] == ["31-2021-0565-6272-LA93-0M50-E080"]


# --------------------------------------------------------------------------- plan files


def _rewrite_plan(src: Path, dst: Path, meta_text: bytes | None = None, chip_size: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from msc_france.plan import PLAN_KEY

    table = pq.read_table(src)
    meta = dict(table.schema.metadata)
    if meta_text is not None:
        meta[PLAN_KEY] = meta_text
    if chip_size is not None:  # every row's chip id on a grid of other chips
        from msc_france.grid import Chip

        ids = [Chip(chip_size, Chip.from_id(c).col // 2, Chip.from_id(c).row // 2).id
               for c in table.column("chip_id").to_pylist()]
        table = table.set_column(table.schema.get_field_index("chip_id"), "chip_id", pa.array(ids))
    pq.write_table(table.replace_schema_metadata(meta), dst)
    return dst


@pytest.fixture()
def plan_file(tiny_world: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path) -> Path:
    out = tmp_path / "plan.parquet"
    assert main(["plan", "--region", str(tiny_region), "--recipe", str(tiny_recipe), "--out", str(out)]) == 0
    return out


def test_plan_files_with_broken_metadata_or_rows(plan_file: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    import pyarrow.parquet as pq

    from msc_france.plan import PLAN_KEY

    good = json.loads(pq.read_schema(plan_file).metadata[PLAN_KEY])
    no_gsds = {k: v for k, v in good.items() if k != "gsds"}
    bad_recipe = {**good, "recipe": {**good["recipe"], "chip_size_m": "big"}}
    first = next(iter(pq.read_table(plan_file).column("chip_id").to_pylist()))
    cases = {
        "truncated": (_rewrite_plan(plan_file, tmp_path / "a.parquet", json.dumps(good).encode()[:200]),
                      "has invalid or incomplete metadata"),
        "incomplete": (_rewrite_plan(plan_file, tmp_path / "b.parquet", json.dumps(no_gsds).encode()),
                       "has invalid or incomplete metadata (KeyError: 'gsds')"),
        "invalid recipe": (_rewrite_plan(plan_file, tmp_path / "c.parquet", json.dumps(bad_recipe).encode()),
                           "has invalid or incomplete metadata"),
        "other chips": (_rewrite_plan(plan_file, tmp_path / "d.parquet", chip_size=1920),
                        "m, its recipe's chips are 960 m"),
    }
    assert first.startswith("960m-")
    capsys.readouterr()
    for name, (path, why) in cases.items():
        code = main(["build", "--plan", str(path), "--out", str(tmp_path / f"{name}.zarr"), "--quiet"])
        err = _one_line(capsys.readouterr().err)
        assert code == BadInputError.exit_code and why in err, (name, err)
        assert not (tmp_path / f"{name}.zarr").exists()


def test_expanded_variables_never_reach_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("MSC_TEST_SECRET_DIR", str(tmp_path / "s3cr3t-token-value"))
    spec = yaml.safe_load((catalogs_dir() / "local" / "aerial.yaml").read_text())
    spec["source"]["path"] = "${MSC_TEST_SECRET_DIR}/catalog.json"
    cat = tmp_path / "cat"
    cat.mkdir()
    (cat / "aerial.yaml").write_text(yaml.safe_dump(spec))
    rec = {"name": "t", "catalog": str(cat), "chip_size_m": 240, "sensors": {"aerial": {"gsd": 1.5}},
           "time": {"start": "2021-01-01", "end": "2021-12-31"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    code = main(["plan", "--region", "toulouse", "--recipe", str(tmp_path / "r.yaml"), "--out",
                 str(tmp_path / "p.parquet")])
    cap = capsys.readouterr()
    assert code != 0
    assert "${MSC_TEST_SECRET_DIR}/catalog.json" in cap.err and "s3cr3t" not in cap.out + cap.err


_THREADS = textwrap.dedent("""
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from affine import Affine
    from msc_france.builder.warp import warp_asset
    from msc_france.grid import PixelGrid
    from msc_france.sources.signing import make_signer

    grid = PixelGrid("EPSG:2154", Affine(2.0, 0, 570000, 0, -2.0, 6280000), 64, 64)
    def one(i):
        return warp_asset(sys.argv[1], make_signer("none"), grid, (1,), "bilinear" if i % 2 else "average", None)
    with ThreadPoolExecutor(4) as pool:
        assert len(list(pool.map(one, range(200)))) == 200
    print("done")
""")


def test_warps_in_threads_print_nothing_on_stderr(tmp_path: Path) -> None:
    """``warnings.catch_warnings`` is not thread-safe: GDAL's NotGeoreferencedWarning once reached
    stderr from two-thread builds, breaking the one-line rule.
    """
    f = _l93_tif(tmp_path / "a.tif", count=1, size=256, block=128)
    r = subprocess.run([sys.executable, "-c", _THREADS, str(f)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr
    assert r.stderr == ""


def test_a_truncated_region_names_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    import shutil

    from msc_france.regions import _load_regions

    cats = tmp_path / "catalogs"
    shutil.copytree(catalogs_dir(), cats)
    text = (cats / "regions.geojson").read_bytes()
    (cats / "regions.geojson").write_bytes(text[: len(text) // 2])
    monkeypatch.setenv("MSC_FRANCE_CATALOGS", str(cats))
    _load_regions.cache_clear()
    try:
        code = main(["regions"])
        err = _one_line(capsys.readouterr().err)
    finally:
        _load_regions.cache_clear()
    assert code == BadInputError.exit_code
    assert err.startswith(f"error: the region names file {cats / 'regions.geojson'} is damaged (JSONDecodeError:")


@pytest.mark.parametrize("command", ["preview", "export", "eval"])
def test_outputs_never_overwrite_a_users_folder(command: str, tiny_store: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("chips.png", "Sentinel", "report.md", "notes.txt"):  # our names too, beside the user's own
        (mine / name).write_text("the user's")
    before = _hashes(mine)
    args = {"preview": ["preview", str(tiny_store), "--chips", "1"],
            "export": ["export", str(tiny_store), "--format", "xstars-folders"],
            "eval": ["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tiny_store)]}[command]
    code = main([*args, "--out", str(mine)])
    err = _one_line(capsys.readouterr().err)
    assert code == BadInputError.exit_code and "holds files msc-france did not write" in err and "notes.txt" in err
    assert _hashes(mine) == before
    if command != "eval":  # its own folder it writes again; another command's it refuses
        ours = tmp_path / "ours"
        assert main([*args, "--out", str(ours)]) == 0
        assert main([*args, "--out", str(ours)]) == 0
        other = ["export", str(tiny_store), "--format", "xstars-folders"] if command == "preview" else \
            ["preview", str(tiny_store), "--chips", "1"]
        capsys.readouterr()
        assert main([*other, "--out", str(ours)]) == BadInputError.exit_code
        assert f"holds msc-france {command} output" in _one_line(capsys.readouterr().err)
