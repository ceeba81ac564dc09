"""Stores built from real-shaped products match references computed here, independently.

Each product family (BD ORTHO, SPOT-6/7, ESA SAFE, Theia/MAJA) is ingested with
``catalog ingest`` and built with ``build``; every chip is compared with a reference computed
in the test with numpy/scipy on the same Lambert-93 grid (exact bilinear sampling through
pyproj, block means for area averaging), never with the builder's code: pixels within 1 DN on
the interior, coverage equal to the source footprint within one pixel, fill never valid.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from pyproj import Transformer
from scipy.ndimage import binary_dilation, binary_erosion, map_coordinates

from msc_france.cli import main
from tests.conftest import write_region_file
from tests.real_products import bdortho_tile, safe_product, spot_product, theia_product

CATALOGS = Path(__file__).resolve().parents[2] / "catalogs" / "local"
WHEN = dt.datetime(2022, 6, 14, 10, 56, 19, tzinfo=dt.UTC)


def _build(tmp: Path, sensor_yaml: str, catalog_json: Path, chip: tuple[float, float], size: int,
           gsd: float, overrides: dict | None = None, min_valid: float = 0.0) -> tuple[zarr.Group, dict]:
    """Build one chip of one sensor from an ingested catalog; (sensor group, chip record)."""
    spec = yaml.safe_load((CATALOGS / sensor_yaml).read_text())
    spec["source"]["path"] = str(catalog_json)
    spec.update(overrides or {})
    cat = tmp / "catalog"
    cat.mkdir(exist_ok=True)
    (cat / sensor_yaml).write_text(yaml.safe_dump(spec))
    recipe = {"name": "t", "catalog": str(cat), "chip_size_m": size, "chips_per_shard": 1,
              "sensors": {spec["name"]: {"gsd": gsd, "max_cloud_cover": 100, "min_valid_fraction": min_valid}},
              "time": {"start": "2000-01-01", "end": "2030-12-31"}}
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    region = write_region_file(tmp / "r.gpkg", (chip[0] + 1, chip[1] + 1, chip[0] + size - 1, chip[1] + size - 1))
    rc = main(["build", "--region", str(region), "--recipe", str(tmp / "recipe.yaml"), "--out", str(tmp / "s.zarr"),
               "--quiet"])
    records = {}
    for f in sorted((tmp / "s.zarr" / "_commits").glob("*.json")):
        records.update(json.loads(f.read_text())["chips"])
    rec = next(iter(records.values()))["sensors"][spec["name"]]
    assert rc == 0 or rec["status"] == "failed", rec
    return zarr.open_group(str(tmp / "s.zarr"), mode="r")[spec["name"]], rec


def _within_one_pixel(valid: np.ndarray, ref: np.ndarray) -> None:
    """Coverage equals the reference except on the reference's one-pixel boundary."""
    k = np.ones((3, 3), bool)
    boundary = binary_dilation(ref, k) & ~binary_erosion(ref, k, border_value=1)
    bad = (valid != ref) & ~boundary
    assert not bad.any(), f"{int(bad.sum())} pixels disagree off the boundary"


# --------------------------------------------------------------------------- BD ORTHO


def test_bdortho_fill_255_never_valid_and_area_average(tmp_path: Path) -> None:
    """A tile whose west 50 m is white fill declared nodata=255: the fill is not data."""
    x0, y1, n = 565440.0, 6272160.0, 480  # one 240 m tile at 0.5 m = one 240 m chip
    d = tmp_path / "delivery"
    rgb = bdortho_tile(d / "31-2021-0565-6272-LA93-0M50-E080.tif", x0, y1, n, seed=1, fill_cols=100)
    irc = bdortho_tile(d / "31-2021-0565-6272-LA93-0M50-IRC-E080.tif", x0, y1, n, seed=2, fill_cols=100)
    assert main(["catalog", "ingest", str(d), "--out", str(tmp_path / "cat")]) == 0
    g, rec = _build(tmp_path, "aerial.yaml", tmp_path / "cat" / "catalog.json", (x0, y1 - 240), 240, 1.5)
    img, valid = g["image"][0], g["valid"][0].astype(bool)
    # Reference: 3 x 3 block means of the valid source pixels (0.5 m -> 1.5 m), numpy only.
    src = np.stack([rgb[0], rgb[1], rgb[2], irc[0]]).astype(float)
    ok = np.stack([rgb[0] != 255] * 4)
    blocks = lambda a: a.reshape(4, 160, 3, 160, 3)  # noqa: E731
    cnt = blocks(ok).sum(axis=(2, 4))
    ref = np.where(cnt > 0, blocks(np.where(ok, src, 0)).sum(axis=(2, 4)) / np.maximum(cnt, 1), 0)
    ref_valid = cnt[0] > 0
    assert (valid == ref_valid).all()  # area average: a partly covered pixel is covered
    assert np.abs(img[:, valid].astype(float) - ref[:, valid]).max() <= 1.0
    assert rec["status"] == "ok" and abs(rec["valid_fraction"] - ref_valid.mean()) < 1e-6
    assert rec["valid_fraction"] < 0.8  # 50 of 240 m are fill: never "1.0"
    assert not (img[:, valid] == 255).all(axis=0).any()  # no valid pixel is white fill


# --------------------------------------------------------------------------- SPOT-6/7


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_spot_float_and_uint16_keep_their_values(tmp_path: Path, dtype: str) -> None:
    """Float32 reflectance is stored x 10000 and uint16 DN as DN: never cast to zeros."""
    x0, y1 = 565440.0, 6272160.0
    d = tmp_path / "spot"
    pms = spot_product(d / "SPOT7_20210614_PMS_ORT.tif", x0, y1, 160, 1.5, 4, dtype, seed=4)
    spot_product(d / "SPOT7_20210614_P_ORT.tif", x0, y1, 160, 1.5, 1, dtype, seed=5)
    spot_product(d / "SPOT7_20210614_MS_ORT.tif", x0, y1, 40, 6.0, 4, dtype, seed=6)
    assert main(["catalog", "ingest", str(d), "--out", str(tmp_path / "cat")]) == 0
    overrides = {} if dtype == "float32" else {"scale": 1.0}
    g, rec = _build(tmp_path, "spot.yaml", tmp_path / "cat" / "catalog.json", (x0, y1 - 240), 240, 1.5, overrides)
    img = g["image"][0].astype(float)
    order = [2, 1, 0, 3]  # store bands red, green, blue, nir; the file says blue, green, red, nir
    ref = np.rint(pms[order].astype(np.float64) * (10000 if dtype == "float32" else 1))
    assert np.abs(img - ref).max() <= 1 and img.min() > 0
    assert rec["item_ids"] == ["SPOT7_20210614_PMS_ORT"] and rec["clipped"] == 0
    assert g.attrs["dtype"] == "uint16" and g.attrs["scale"] == (1e-4 if dtype == "float32" else 1.0)


def test_spot_products_of_one_pass_are_never_mosaicked(tmp_path: Path) -> None:
    import pystac

    from msc_france.grid import Chip
    from msc_france.plan import rank_candidates

    d = tmp_path / "spot"
    for name, res, count, n in (("PMS", 1.5, 4, 160), ("P", 1.5, 1, 160), ("MS", 6.0, 4, 40)):
        spot_product(d / f"SPOT6_20210614_{name}_ORT.tif", 565440.0, 6272160.0, n, res, count, "uint16")
    from msc_france.ingest import ingest

    ingest(d, tmp_path / "cat")
    items = list(pystac.Catalog.from_file(str(tmp_path / "cat" / "catalog.json")).get_items(recursive=True))
    assert sorted(i.properties["msc_france:product"] for i in items) == ["spot-ms", "spot-pan", "spot-pms"]
    chip = Chip(240, 565440 // 240, 6271920 // 240)
    cands = rank_candidates([chip], items, "spot", dt.date(2021, 6, 14), None, 5)[(chip.id, "spot")]
    assert len(cands) == 3 and all(len(c.items) == 1 for c in cands)


def test_spot_without_band_names_is_skipped_with_the_reason(tmp_path: Path) -> None:
    spot_product(tmp_path / "d" / "SPOT7_20210614_PMS.tif", 565440.0, 6272160.0, 16, 1.5, 4, "uint16",
                 descriptions=None)
    from msc_france.errors import BadInputError
    from msc_france.ingest import ingest

    with pytest.raises(BadInputError, match="no band names: pass --band-order"):
        ingest(tmp_path / "d", tmp_path / "cat")
    r = ingest(tmp_path / "d", tmp_path / "cat", band_order=["blue", "green", "red", "nir"])
    assert r.items == 1 and not r.skipped


# --------------------------------------------------------------------------- Sentinel-2


CHIP = (417600.0, 6420480.0)  # a 480 m Lambert-93 chip near Bordeaux, in UTM zone 30 (4 deg rotation)


def _utm_origin(crs: str = "EPSG:32630") -> tuple[float, float]:
    t = Transformer.from_crs("EPSG:2154", crs, always_xy=True)
    xs, ys = t.transform([CHIP[0], CHIP[0] + 480, CHIP[0], CHIP[0] + 480], [CHIP[1], CHIP[1], CHIP[1] + 480, CHIP[1] + 480])
    return np.floor(min(xs) / 10) * 10 - 150, np.ceil(max(ys) / 10) * 10 + 150


def _sample(fx, values: np.ndarray, res: float, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    """Values of a UTM raster at every store pixel centre (48 x 48 at 10 m): exact bilinear
    (order 1) or nearest (order 0) with pyproj and scipy; also the fractional (row, col).
    """
    rows, cols = np.mgrid[0:48, 0:48]
    x, y = CHIP[0] + (cols + 0.5) * 10, CHIP[1] + 480 - (rows + 0.5) * 10
    u, v = Transformer.from_crs("EPSG:2154", fx.crs, always_xy=True).transform(x, y)
    c = (u - fx.transform.c) / res - 0.5
    r = (fx.transform.f - v) / res - 0.5
    if order == 0:
        return values[np.floor(r + 0.5).astype(int), np.floor(c + 0.5).astype(int)], r, c
    return map_coordinates(values.astype(np.float64), [r, c], order=1), r, c


def _bilinear_support_valid(ok: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
    return ok[r0, c0] & ok[r0 + 1, c0] & ok[r0, c0 + 1] & ok[r0 + 1, c0 + 1]


def test_s2_safe_bilinear_exact_coverage_and_baseline(tmp_path: Path) -> None:
    x0, y1 = _utm_origin()
    fx = safe_product(tmp_path / "dl", WHEN, x0, y1, baseline="04.00")
    assert main(["catalog", "ingest", str(tmp_path / "dl"), "--out", str(tmp_path / "cat")]) == 0
    g, rec = _build(tmp_path, "sentinel-2-l2a.yaml", tmp_path / "cat" / "catalog.json", CHIP, 480, 10)
    img, valid = g["image"][0].astype(float), g["valid"][0].astype(bool)
    assert "s2 baseline 04.00 (from s2:processing_baseline)" in rec["harmonization"]
    dn_ok = fx.bands["B02"] != 0
    scl_near, _, _ = _sample(fx, np.kron(fx.masks["SCL"], np.ones((2, 2), np.uint8)), 10, 0)
    clear = ~np.isin(scl_near, [0, 1, 3, 8, 9, 10])
    near_ok, r, c = _sample(fx, dn_ok, 10, 0)
    _within_one_pixel(valid, near_ok.astype(bool) & clear)
    interior = _bilinear_support_valid(dn_ok, r, c) & valid
    assert interior.mean() > 0.3
    for b, key in enumerate(("B02", "B03", "B04", "B08")):
        ref, _, _ = _sample(fx, fx.bands[key].astype(float) - 1000, 10, 1)  # BOA_ADD_OFFSET -1000
        diff = np.abs(img[b] - np.clip(np.rint(ref), 1, None))[interior]
        assert diff.max() <= 1, (key, diff.max())
    assert not valid[~near_ok.astype(bool)].any() or _bilinear_support_valid(dn_ok, r, c)[valid].mean() > 0.9


def test_theia_int16_nodata_masks_and_negatives(tmp_path: Path) -> None:
    x0, y1 = _utm_origin()
    fx = theia_product(tmp_path / "dl", WHEN, x0, y1)
    # SRE and 20 m files are the product's own files it does not read: listed as not used, exit 0.
    assert main(["catalog", "ingest", str(tmp_path / "dl"), "--out", str(tmp_path / "cat")]) == 0
    g, rec = _build(tmp_path, "sentinel-2-theia.yaml", tmp_path / "cat" / "catalog.json", CHIP, 480, 10)
    img, valid = g["image"][0].astype(float), g["valid"][0].astype(bool)
    assert rec["harmonization"] == "theia: DN * 0.0001 +0"
    ok = fx.bands["B2"] != -10000
    masks_ok = (fx.masks["CLM"] == 0) & (fx.masks["EDG"] == 0) & (fx.masks["SAT"] == 0)
    near, r, c = _sample(fx, ok & masks_ok, 10, 0)
    _within_one_pixel(valid, near.astype(bool))
    interior = _bilinear_support_valid(ok, r, c) & valid
    for b, key in enumerate(("B2", "B3", "B4", "B8")):
        ref, _, _ = _sample(fx, fx.bands[key].astype(float), 10, 1)
        diff = np.abs(img[b] - np.clip(np.rint(ref), 1, None))[interior]
        assert diff.max() <= 1, (key, diff.max())
    # Negative blue reflectances are clipped to the smallest stored value and counted.
    ref_blue, _, _ = _sample(fx, fx.bands["B2"].astype(float), 10, 1)
    negative = (np.rint(ref_blue) < 1) & interior
    assert negative.sum() >= 4 and (img[0][negative] == 1).all()
    assert abs(rec["clipped"] - int(negative.sum())) <= 2, (rec["clipped"], int(negative.sum()))
    # A CLM raster is not SCL: its clear pixels (0) are data, not nodata.
    assert valid.mean() > 0.3


def test_theia_product_without_masks_is_refused(tmp_path: Path) -> None:
    from msc_france.errors import BadInputError
    from msc_france.ingest import ingest

    x0, y1 = _utm_origin()
    theia_product(tmp_path / "dl", WHEN, x0, y1, masks=("CLM",))
    with pytest.raises(BadInputError, match="Theia product lacks EDG_R1, SAT_R1"):
        ingest(tmp_path / "dl", tmp_path / "cat")


def test_value_outside_the_declared_range_can_be_refused(tmp_path: Path) -> None:
    """out_of_range: error makes the chip fail with a one-line reason instead of clipping."""
    x0, y1 = _utm_origin()
    theia_product(tmp_path / "dl", WHEN, x0, y1)
    main(["catalog", "ingest", str(tmp_path / "dl"), "--out", str(tmp_path / "cat")])
    g, rec = _build(tmp_path, "sentinel-2-theia.yaml", tmp_path / "cat" / "catalog.json", CHIP, 480, 10,
                    {"out_of_range": "error"})
    assert rec["status"] == "failed"
    assert "value(s) outside the declared range [0.0001, 6.5535] of sentinel-2-theia" in rec["reason"]
    assert not g["valid"][0].any()


def test_unsupported_data_type_fails_the_chip_with_a_reason(tmp_path: Path) -> None:
    import rasterio
    from affine import Affine

    d = tmp_path / "dl"
    d.mkdir()
    with rasterio.open(d / "31-2021-0565-6272-LA93-0M50-E080.tif", "w", driver="GTiff", width=480, height=480, count=4,
                       dtype="complex64", crs="EPSG:2154", transform=Affine(0.5, 0, 565440, 0, -0.5, 6272160)) as dst:
        dst.write(np.ones((4, 480, 480), np.complex64))
    assert main(["catalog", "ingest", str(d), "--out", str(tmp_path / "cat")]) == 0
    g, rec = _build(tmp_path, "aerial.yaml", tmp_path / "cat" / "catalog.json", (565440.0, 6271920.0), 240, 1.5,
                    {"bands": [{"name": n, "asset": "image", "index": i + 1}
                               for i, n in enumerate(["red", "green", "blue", "nir"])]})
    assert rec["status"] == "failed" and "unsupported data type complex64" in rec["reason"]
    assert not g["valid"][0].any() and not g["image"][0].any()


def _overlap(edges_dst: np.ndarray, edges_src: np.ndarray) -> np.ndarray:
    """(n_dst, n_src) lengths of overlap between 1-D cells given by ascending edges."""
    lo = np.maximum(edges_dst[:-1, None], edges_src[None, :-1])
    hi = np.minimum(edges_dst[1:, None], edges_src[None, 1:])
    return np.clip(hi - lo, 0, None)


def test_bdortho_seam_pixels_average_both_tiles(tmp_path: Path) -> None:
    """Two real adjacent IGN patches (f5, Lambert-93): a 2 m pixel straddling their seam is the
    area average of every 0.2 m source pixel under it, from both tiles (numpy, exact overlaps).
    """
    import rasterio

    from tests.helpers import realdata

    src = realdata("f5_l93")
    d = tmp_path / "delivery"
    shutil.copytree(src, d)
    assert main(["catalog", "ingest", str(d), "--out", str(tmp_path / "cat"), "--datetime", "2021-07-01"]) == 0
    x0, y0, size, gsd = 792000.0, 6271200.0, 30, 2.0  # rows of 2 m; the seam at y = 6271221 cuts row 4
    g, rec = _build(tmp_path, "aerial.yaml", tmp_path / "cat" / "catalog.json", (x0, y0), size, gsd)
    assert rec["status"] in ("ok", "flagged") and len(rec["item_ids"]) == 2
    got = np.asarray(g["image"][0])[:3].astype(float)
    n = int(size / gsd)
    want, covered = _area_means(src, x0, y0, size, gsd, "all-bands")
    area = np.zeros((n, n))
    for f in sorted((src / "rgb").iterdir()):  # the footprints' area under each pixel
        with rasterio.open(f) as r:
            t = r.transform
            sx = t.c + t.a * np.arange(r.width + 1)
            sy = np.sort(t.f + t.e * np.arange(r.height + 1))
        area += np.outer(_overlap(np.sort(y0 + size - gsd * np.arange(n + 1)), sy)[::-1].sum(1),
                         _overlap(x0 + gsd * np.arange(n + 1), sx).sum(1))
    seam_row = int((y0 + size - 6271221.0) // gsd)
    assert 0 < seam_row < n and (area[seam_row] > 0).all()
    diff = np.abs(got - want)[:, covered]
    assert diff.max() <= 1.0, f"max {diff.max():.2f} DN off the exact area average"
    assert np.abs(got[:, seam_row] - want[:, seam_row]).max() <= 1.0



def _area_means(src: Path, x0: float, y0: float, size: float, gsd: float, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Area means (numpy, exact overlaps) of the RGB tiles of ``src`` on a chip grid, with 255 as
    fill under ``rule``: ``all-bands`` (a pixel is fill when its three bands are 255) or
    ``per-band`` (GDAL's per-band nodata: each band's 255 left out of that band alone).
    """
    import rasterio

    n = int(size / gsd)
    xe = x0 + gsd * np.arange(n + 1)
    ye = np.sort(y0 + size - gsd * np.arange(n + 1))
    total, area = np.zeros((3, n, n)), np.zeros((3, n, n))
    for f in sorted((src / "rgb").iterdir()):
        with rasterio.open(f) as r:
            img, t = r.read().astype(float), r.transform
            sx = t.c + t.a * np.arange(r.width + 1)
            sy = np.sort(t.f + t.e * np.arange(r.height + 1))
        ok = np.broadcast_to(~(img == 255).all(axis=0), img.shape) if rule == "all-bands" else img != 255
        wx, wy = _overlap(xe, sx), _overlap(ye, sy)[::-1][:, ::-1]
        total += np.einsum("rs,bsc,kc->brk", wy, img * ok, wx)
        area += np.einsum("rs,bsc,kc->brk", wy, ok.astype(float), wx)
    return np.where(area > 0, total / np.where(area > 0, area, 1), 0), area.max(axis=0) > 0


def test_bdortho_fill_is_white_in_every_band(tmp_path: Path) -> None:
    """The rule for 255 (BD ORTHO's declared nodata) on real IGN patches: a pixel is fill only when
    all three bands are 255; 255 in one band is a saturated pixel, kept as data. Checked against an
    independent numpy area mean under that rule, and shown to differ from GDAL's per-band rule
    (so the test would see the other choice).
    """
    from tests.helpers import realdata

    src = realdata("f5_l93")
    d = tmp_path / "delivery"
    shutil.copytree(src, d)
    assert main(["catalog", "ingest", str(d), "--out", str(tmp_path / "cat"), "--datetime", "2021-07-01"]) == 0
    x0, y0, size, gsd = 792000.0, 6271200.0, 50, 1.0
    g, rec = _build(tmp_path, "aerial.yaml", tmp_path / "cat" / "catalog.json", (x0, y0), size, gsd)
    got = np.asarray(g["image"][0])[:3].astype(float)
    want, covered = _area_means(src, x0, y0, size, gsd, "all-bands")
    per_band, _ = _area_means(src, x0, y0, size, gsd, "per-band")
    valid = np.asarray(g["valid"][0]).astype(bool)
    assert (valid == covered).all()
    assert np.abs(got - want)[:, covered].max() <= 1.0
    differs = np.abs(want - per_band)[:, covered] > 2
    assert differs.sum() >= 5, "the patches no longer hold pixels where the two rules differ"
    closer = np.abs(got - want)[:, covered] < np.abs(got - per_band)[:, covered]
    assert closer[differs].all()
    # GDAL's own warper on the top tile alone (its rows 0-28 lie wholly in it), nodata 255 for
    # all bands: GDAL's default (UNIFIED_SRC_NODATA=PARTIAL) is the same all-bands rule.
    import rasterio
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    top = sorted((src / "rgb").iterdir())[0]
    with rasterio.open(top) as r:
        gdal = np.zeros((3, 50, 50), np.float32)
        reproject(r.read(), gdal, src_transform=r.transform, src_crs=r.crs, src_nodata=255,
                  dst_transform=Affine(1.0, 0, x0, 0, -1.0, y0 + size), dst_crs=r.crs, resampling=Resampling.average)
    assert np.abs(got[:, :29] - gdal[:, :29]).max() <= 1.0


def test_spot_dn_store_keeps_the_all_bands_nodata_rule(tmp_path: Path) -> None:
    """A uint16 DN SPOT delivery declaring nodata 0, stored as DN (``scale: 1``): pixels that are 0 in
    every band are fill (never valid), a 0 in one band only is data (numpy masks of the file).
    """
    import rasterio
    from affine import Affine

    d = np.random.default_rng(0).integers(100, 4000, (4, 64, 64)).astype(np.uint16)
    d[:, 10:20, 10:40] = 0
    d[0, 30:40, 30:40] = 0
    src = tmp_path / "dl" / "SPOT7_20210614_PMS.tif"
    src.parent.mkdir()
    with rasterio.open(src, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint16", crs="EPSG:2154",
                       transform=Affine(1.5, 0, 565440, 0, -1.5, 6272640), nodata=0) as f:
        f.write(d)
        f.descriptions = ("red", "green", "blue", "nir")
    assert main(["catalog", "ingest", str(tmp_path / "dl"), "--out", str(tmp_path / "cat"), "--product", "spot"]) == 0
    g, rec = _build(tmp_path, "spot.yaml", tmp_path / "cat" / "catalog.json", (565440.0, 6272544.0), 96, 1.5,
                    overrides={"scale": 1})
    valid = np.asarray(g["valid"][0]).astype(bool)
    img = np.asarray(g["image"][0])
    fill = (d == 0).all(axis=0)
    assert not valid[fill].any() and valid[~fill].all()
    assert np.array_equal(img[:, ~fill], d[:, ~fill])  # DN stored as they are, band order red, green, blue, nir
