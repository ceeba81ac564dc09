"""The build: pixel alignment, harmonisation, masks, store format, idempotency, append, lock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import xarray as xr
import zarr

from msc_france.cli import main
from msc_france.errors import StoreError
from msc_france.grid import Chip
from msc_france.store import Store
from tests.conftest import TINY_REGION_L93, tree_hashes, write_region_file


def _layer_marker_xy(store: Path, group: str, chip_index: int, band: int, near: tuple[float, float]) -> tuple[float, float]:
    """L93 centroid of the bright calibration marker within 150 m of ``near``, in one sensor's chip.

    The search window is generous (the marker is 90 m); the assertion is on the centroid.
    """
    g = zarr.open_group(str(store), mode="r")[group]
    img = g["image"][chip_index, band].astype(np.float64)
    gsd = g.attrs["gsd"]
    xmin, ymax = float(g["chip_xmin"][chip_index]), float(g["chip_ymax"][chip_index])
    rows, cols = np.indices(img.shape)
    x, y = xmin + (cols + 0.5) * gsd, ymax - (rows + 0.5) * gsd
    win = (np.abs(x - near[0]) <= 150) & (np.abs(y - near[1]) <= 150)
    background = np.median(img[win])
    w = np.where(win, np.clip(img - background, 0, None), 0)
    w = np.where(w > 0.5 * w.max(), w, 0)
    return float((w * x).sum() / w.sum()), float((w * y).sum() / w.sum())


def test_pixel_exact_alignment_of_markers(tiny_store: Path, tiny_world: Path) -> None:
    truth = json.loads((tiny_world / "truth.json").read_text())
    store = Store.open(tiny_store)
    ids = store.chip_ids()
    checked = 0
    for mx, my in truth["markers_l93"]:
        chip = Chip(960, int(mx // 960), int(my // 960))
        if chip.id not in ids:
            continue
        x0, y0, x1, y1 = chip.bounds
        if min(mx - x0, x1 - mx, my - y0, y1 - my) < 150:
            continue  # a marker cut by the chip edge has a biased centroid
        i = ids.index(chip.id)
        for group, band in (("sentinel-2-l2a", 2), ("landsat-8-c2-l2", 2), ("aerial", 0)):
            xy = _layer_marker_xy(tiny_store, group, i, band, (mx, my))
            # Under half a pixel of the coarsest sensor (Landsat, 30 m).
            assert abs(xy[0] - mx) < 15 and abs(xy[1] - my) < 15, (group, xy, (mx, my))
        checked += 1
    assert checked >= 1


def test_store_layout_and_attributes(tiny_store: Path) -> None:
    root = zarr.open_group(str(tiny_store), mode="r")
    meta = root.attrs["msc_france"]
    assert meta["format_version"] == 2 and meta["complete"] is True and meta["n_chips"] == 4
    s2 = root["sentinel-2-l2a"]
    assert s2["image"].shape == (4, 4, 96, 96) and s2["image"].dtype == np.uint16
    assert s2["image"].chunks == (1, 4, 96, 96) and s2["image"].shards == (2, 4, 96, 96)
    assert root["landsat-8-c2-l2"]["image"].shape == (4, 4, 32, 32)
    assert root["aerial"]["image"].shape == (4, 4, 640, 640) and root["aerial"]["image"].dtype == np.uint8
    assert root["labels"]["class"].shape == (4, 96, 96)
    assert s2.attrs["proj:code"] == "EPSG:2154" and s2.attrs["scale"] == 1e-4
    assert "Lambert" in s2["spatial_ref"].attrs["crs_wkt"] or "RGF93" in s2["spatial_ref"].attrs["crs_wkt"]
    assert list(s2["band"][:]) == ["blue", "green", "red", "nir"]
    stats = s2.attrs["stats"]
    assert len(stats["mean"]) == 4 and all(s > 0 for s in stats["std"])
    # Reflectance x 10000: NIR of vegetation-dominated ground is far above the visible bands.
    assert 1500 < stats["mean"][3] < 4500 and stats["mean"][0] < 1500


def test_xarray_and_geopandas_readback(tiny_store: Path) -> None:
    ds = xr.open_zarr(tiny_store, group="sentinel-2-l2a")
    assert ds["image"].dims == ("chip", "band", "y", "x")
    assert list(ds["band"].values) == ["blue", "green", "red", "nir"]
    assert ds["valid"].dims == ("chip", "y", "x")
    assert np.issubdtype(ds["datetime"].dtype, np.datetime64)
    idx = gpd.read_parquet(tiny_store / "index.parquet")
    assert idx.crs.to_epsg() == 2154 and len(idx) == 4
    assert set(idx["split"]) <= {"train", "val", "test"}
    assert (idx["status_sentinel_2_l2a"] == "ok").all()
    assert idx.geometry.area.round().eq(960 * 960).all()
    assert (idx["lon_min"] < idx["lon_max"]).all()
    assert list(ds["chip_id"].values) == list(idx["chip_id"])


def _parse(cat, sensor: str, item: dict):  # noqa: ANN001, ANN202
    from msc_france.products import rules_for

    spec = cat.sensor(sensor)
    return rules_for(spec.product).parse(spec, item)


def test_harmonisation_across_baselines_and_sensors(tiny_world: Path) -> None:
    """S2 items of baseline 03.01 and 05.09 and Landsat all give the marker's true reflectance."""
    from msc_france.builder.read import read_candidate
    from msc_france.config import load_catalog
    from msc_france.sources.signing import NoSigner

    truth = json.loads((tiny_world / "truth.json").read_text())
    cat = load_catalog("demo")
    s2_items = [json.loads(line) for line in (tiny_world / "sentinel-2-l2a.ndjson").read_text().splitlines()]
    baselines: dict[str, list[np.ndarray]] = {}
    for mx, my in truth["markers_l93"]:
        chip = Chip(960, int(mx // 960), int(my // 960))
        row, col = int((chip.bounds[3] - my) // 10), int((mx - chip.bounds[0]) // 10)
        for it in s2_items:
            r = read_candidate(cat.sensor("sentinel-2-l2a"), [_parse(cat, "sentinel-2-l2a", it)], chip.pixel_grid(10),
                               NoSigner())
            if not r.valid[row - 1 : row + 2, col - 1 : col + 2].all():
                continue  # outside this tile, or the marker is under a cloud or its shadow
            baselines.setdefault(it["properties"]["s2:processing_baseline"], []).append(r.data[:, row, col])
            assert "s2 baseline" in r.harmonization
    assert set(baselines) == {"03.01", "05.09"}
    for values in baselines.values():
        for v in values:
            assert np.all(np.abs(v.astype(int) - 6000) < 300), v  # marker reflectance 0.60
    mx, my = truth["markers_l93"][5]
    chip = Chip(960, int(mx // 960), int(my // 960))
    l8 = [json.loads(line) for line in (tiny_world / "landsat-c2-l2.ndjson").read_text().splitlines()]
    clear = min((it for it in l8 if it["properties"]["platform"] == "landsat-8"),
                key=lambda it: it["properties"]["eo:cloud_cover"])
    r = read_candidate(cat.sensor("landsat-8-c2-l2"), [_parse(cat, "landsat-8-c2-l2", clear)], chip.pixel_grid(30),
                       NoSigner())
    assert r.harmonization == "DN * 2.75e-05 -0.2"
    row, col = int((chip.bounds[3] - my) // 30), int((mx - chip.bounds[0]) // 30)
    assert np.all(np.abs(r.data[:, row, col].astype(int) - 6000) < 1200)  # 90 m marker, 30 m pixels, PSF


def test_masks_clouds_and_nodata(tiny_world: Path) -> None:
    from msc_france.builder.read import read_candidate
    from msc_france.config import load_catalog
    from msc_france.sources.signing import NoSigner

    cat = load_catalog("demo")
    x0, y0, x1, y1 = TINY_REGION_L93
    chip = Chip(960, int(x0 // 960), int(y0 // 960))
    s2 = [json.loads(line) for line in (tiny_world / "sentinel-2-l2a.ndjson").read_text().splitlines()]
    cloudy = max(s2, key=lambda it: it["properties"]["eo:cloud_cover"])
    r = read_candidate(cat.sensor("sentinel-2-l2a"), [_parse(cat, "sentinel-2-l2a", cloudy)], chip.pixel_grid(10),
                       NoSigner())
    assert r.cloud_fraction is not None and r.cloud_fraction > 0.2
    assert r.valid_fraction < 0.8
    assert r.valid.dtype == np.uint8 and set(np.unique(r.valid)) <= {0, 1}
    # Clouds are bright: invalid pixels are brighter than valid ones in the blue band.
    blue = r.data[0].astype(float)
    assert blue[r.valid == 0].mean() > blue[r.valid == 1].mean() + 1000
    # A chip beyond the east tile's edge is partly nodata: covered < 1, and nodata pixels are 0.
    east = max((it for it in s2 if "T31TDJ" in it["id"]), key=lambda it: -it["properties"]["eo:cloud_cover"])
    far = Chip(960, int(east["assets"]["B02"]["proj:bbox"][2] // 960) + 0, chip.row)
    from shapely.geometry import box

    from msc_france.crs import L93, reproject_geometry

    tile_l93 = reproject_geometry(box(*east["assets"]["B02"]["proj:bbox"]), "EPSG:32631", L93)
    edge_x = tile_l93.bounds[2]
    far = Chip(960, int(edge_x // 960), chip.row)
    r2 = read_candidate(cat.sensor("sentinel-2-l2a"), [_parse(cat, "sentinel-2-l2a", east)], far.pixel_grid(10),
                        NoSigner())
    assert 0 < r2.covered_fraction < 1
    assert np.all(r2.data[:, r2.valid == 0] == 0) or r2.cloud_fraction


def test_rerun_is_idempotent(tiny_store: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, copy)
    before = tree_hashes(copy)
    assert main(["build", "--region", str(tiny_region), "--recipe", str(tiny_recipe), "--out", str(copy),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "built 0 chips, skipped 4 already done" in out
    assert tree_hashes(copy) == before


def test_append_second_region(tiny_store: Path, tiny_recipe: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, copy)
    before = tree_hashes(copy)
    old = Store.open(copy)
    old_s2 = old.root["sentinel-2-l2a"]["image"][:4]
    x0, y0, x1, y1 = TINY_REGION_L93
    east = write_region_file(tmp_path / "east.gpkg", (x1, y0, x1 + 480, y1))  # the next column (2 chips)
    assert main(["build", "--region", str(east), "--recipe", str(tiny_recipe), "--out", str(copy), "--quiet"]) == 0
    s = Store.open(copy)
    assert s.n_chips == 6
    assert s.meta.regions == ("tiny", "east")
    np.testing.assert_array_equal(s.root["sentinel-2-l2a"]["image"][:4], old_s2)
    idx = s.index()
    assert list(idx["region"][-2:]) == ["east", "east"]
    assert (idx["status_aerial"] == "ok").all()
    assert before.keys() <= tree_hashes(copy).keys()


def test_concurrent_build_is_refused(tiny_store: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, copy)
    with Store.open(copy, mode="r+").lock():
        code = main(["build", "--region", str(tiny_region), "--recipe", str(tiny_recipe), "--out", str(copy),
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == StoreError.exit_code
    assert "is being built by pid" in err and len(err.strip().splitlines()) == 1


def test_export_xstars_layout(tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    out = tmp_path / "xs"
    assert main(["export", str(tiny_store), "--format", "xstars-folders", "--out", str(out)]) == 0
    names = {}
    for sensor in ("Sentinel", "Landsat", "SPOT"):
        files = sorted(p.name for p in (out / sensor / "tiny").glob("*.png"))
        names[sensor] = files
        img = Image.open(out / sensor / "tiny" / files[0])
        assert img.mode == "RGB"
    assert names["Sentinel"] == names["Landsat"] == names["SPOT"] and len(names["SPOT"]) == 4
    assert Image.open(out / "SPOT" / "tiny" / names["SPOT"][0]).size == (640, 640)
    assert Image.open(out / "Landsat" / "tiny" / names["SPOT"][0]).size == (32, 32)


def test_info_validate_preview(tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(tiny_store)]) == 0
    out = capsys.readouterr().out
    assert "4 chips of 960 m" in out and "complete" in out and "ok=4" in out
    assert main(["validate", str(tiny_store)]) == 0
    assert "16 chip checksums verified" in capsys.readouterr().out
    assert main(["preview", str(tiny_store), "--out", str(tmp_path / "prev")]) == 0
    for name in ("chips.png", "footprints.png"):
        assert (tmp_path / "prev" / name).stat().st_size > 10_000


def test_validate_detects_corruption(tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, copy)
    g = zarr.open_group(str(copy), mode="r+")
    img = g["sentinel-2-l2a"]["image"]
    chip = img[1]
    chip[0, 0, 0] += 1
    img[1] = chip
    assert main(["validate", str(copy)]) == StoreError.exit_code
    captured = capsys.readouterr()
    assert "checksum mismatch" in captured.out and "is corrupt" in captured.err


def test_newer_format_is_refused(tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, copy)
    g = zarr.open_group(str(copy), mode="r+")
    meta = dict(g.attrs["msc_france"])
    meta["format_version"] = 99
    g.attrs["msc_france"] = meta
    assert main(["info", str(copy)]) == StoreError.exit_code
    assert "newer than this msc-france supports" in capsys.readouterr().err


def test_blocked_split_recipe_gives_every_chip_its_rule_split(tmp_path: Path, tiny_recipe: Path,
                                                               tiny_region: Path) -> None:
    import yaml

    rec = yaml.safe_load(tiny_recipe.read_text())
    rec["split"] = {"train": 0.5, "val": 0.25, "test": 0.25, "salt": "blocks", "block_chips": 2, "buffer_chips": 1}
    recipe = tmp_path / "blocked.yaml"
    recipe.write_text(yaml.safe_dump(rec))
    out = tmp_path / "blocked.zarr"
    assert main(["build", "--region", str(tiny_region), "--recipe", str(recipe), "--out", str(out), "--quiet"]) == 0
    idx = gpd.read_parquet(out / "index.parquet")
    # Expected split per chip, computed here from the documented rule: the block key hashed with
    # sha256, then buffer where a higher-ranked split lies within one chip.
    import hashlib

    def block(c: int, r: int) -> str:
        h = int.from_bytes(hashlib.sha256(f"blocks:block2:960m:{c // 2}:{r // 2}".encode()).digest()[:8], "big")
        u = h / 2**64
        return "train" if u < 0.5 else "val" if u < 0.75 else "test"

    rank = {"train": 0, "val": 1, "test": 2}
    for cid, got in zip(idx["chip_id"], idx["split"], strict=True):
        chip = Chip.from_id(cid)
        own = block(chip.col, chip.row)
        near = [block(chip.col + dc, chip.row + dr) for dc in (-1, 0, 1) for dr in (-1, 0, 1)]
        want = "buffer" if any(rank[n] < rank[own] for n in near) else own
        assert got == want, cid
    assert main(["info", str(out)]) == 0


def test_clearest_selection_keeps_the_most_valid_candidate(tiny_world: Path, tiny_recipe: Path, tiny_region: Path,
                                                           tiny_store: Path, tmp_path: Path) -> None:
    """``selection: clearest`` keeps, per chip and sensor, the candidate whose own build (a plan
    holding that candidate alone) is the most valid; first-valid keeps rank 1 whenever it is valid
    enough.
    """
    import geopandas as gpd
    import pyarrow.parquet as pq
    import yaml

    from msc_france.plan import PLAN_KEY
    from msc_france.store import Store

    rec = yaml.safe_load(tiny_recipe.read_text())
    for s in rec["sensors"].values():
        s.update(selection="clearest", min_valid_fraction=0.0)  # first-valid would stop at rank 1
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    plan = tmp_path / "plan.parquet"
    assert main(["plan", "--region", str(tiny_region), "--recipe", str(tmp_path / "r.yaml"), "--out", str(plan)]) == 0
    rows = gpd.read_parquet(plan)
    table = pq.read_table(plan)
    # The planner ranks the clearest acquisition first on this world: reverse the ranks, so that
    # the first candidate is the least clear and only a real choice finds the best.
    worst_first = rows.copy()
    n = worst_first.groupby(["chip_id", "sensor"])["rank"].transform("max")
    worst_first["rank"] = np.where(worst_first["rank"] > 0, n + 1 - worst_first["rank"], 0)
    reversed_plan = tmp_path / "reversed.parquet"
    worst_first.to_parquet(reversed_plan)
    pq.write_table(pq.read_table(reversed_plan).replace_schema_metadata(
        {**pq.read_table(reversed_plan).schema.metadata, PLAN_KEY: table.schema.metadata[PLAN_KEY]}), reversed_plan)
    out = tmp_path / "clear.zarr"
    assert main(["build", "--plan", str(reversed_plan), "--out", str(out), "--quiet"]) == 0
    alone: dict[tuple[str, str, int], tuple[float, list[str]]] = {}  # (chip, sensor, rank) -> its own build
    for r in sorted(set(rows["rank"]) - {0}):
        keep = pq.read_table(plan).filter(pq.read_table(plan).column("rank").to_numpy() == r)
        one = tmp_path / f"rank{r}.parquet"
        pq.write_table(keep.replace_schema_metadata(table.schema.metadata), one)
        st = tmp_path / f"rank{r}.zarr"
        assert main(["build", "--plan", str(one), "--out", str(st), "--quiet"]) == 0
        idx = Store.open(st).index()
        for sensor in ("sentinel-2-l2a", "landsat-8-c2-l2"):
            col = sensor.replace("-", "_")
            for cid, vf, ids in zip(idx["chip_id"], idx[f"valid_fraction_{col}"], idx[f"item_ids_{col}"], strict=True):
                if len(ids):
                    alone[(cid, sensor, r)] = (float(vf), list(ids))
    clear = Store.open(out).index().set_index("chip_id")
    first = Store.open(tiny_store).index().set_index("chip_id")
    checked = better = 0
    for sensor in ("sentinel-2-l2a", "landsat-8-c2-l2"):
        col = sensor.replace("-", "_")
        for cid in clear.index:
            own = {r: v for (c, s, r), v in alone.items() if c == cid and s == sensor}
            if len(own) < 2:
                continue
            best = max(own.values(), key=lambda v: v[0])
            assert clear.loc[cid, f"valid_fraction_{col}"] == pytest.approx(best[0], abs=1e-6)
            assert list(clear.loc[cid, f"item_ids_{col}"]) == best[1] or \
                sum(1 for v in own.values() if abs(v[0] - best[0]) < 1e-9) > 1  # ties: either
            assert clear.loc[cid, f"valid_fraction_{col}"] >= first.loc[cid, f"valid_fraction_{col}"] - 1e-9
            checked += 1
            better += int(best[0] > own[max(own)][0] + 1e-9)  # the reversed plan's first candidate
    assert checked > 0 and better > 0, (checked, better)  # some chip needed the choice
    assert Store.open(out).meta.recipe["sensors"]["sentinel-2-l2a"]["selection"] == "clearest"
    assert "selection" not in Store.open(tiny_store).meta.recipe["sensors"]["sentinel-2-l2a"]
