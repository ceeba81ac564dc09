"""Several providers of one sensor: two real STAC APIs (rustac) on 127.0.0.1 serving the tiny world's
Sentinel-2 scenes the way Planetary Computer and Earth Search do (other ids, other asset keys,
another encoding: one applies BOA_ADD_OFFSET to its files and says so, the other does not), with
overlapping and missing scenes.

Every store is compared with the store built from the demo source itself (``tiny_store``), whose
files carry the scenes' values without any offset: the same pixels whoever serves them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
import zarr

from msc_france.cli import main
from msc_france.products import rules_for
from msc_france.products.sentinel2 import mgrs_tile
from tests.servers import AssetServer, FaultProxy, free_port, rustac_api

S2 = "sentinel-2-l2a"
DAY = "20210528"  # the clearest date, which every chip builds from
MISSING = f"{DAY}T105031_R051_T31TDJ"  # Planetary Computer "lacks" this scene here (its issue #438)
ES_KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "SCL": "scl"}


def _pc_item(item: dict, world: Path, url: str) -> dict:
    """Planetary Computer's shape (the demo's own): files that carry the +1000 DN offset from
    baseline 04.00, served over HTTP.
    """
    item = json.loads(json.dumps(item))
    for a in item["assets"].values():
        a["href"] = f"{url}/pc/{Path(a['href']).relative_to(world)}"
    return item


def _es_item(item: dict, root: Path, world: Path, url: str) -> dict:
    """Earth Search's shape: its own id and asset keys, MGRS parts instead of s2:mgrs_tile, and from
    baseline 04.00 files with the offset applied (DN - 1000) and ``earthsearch:boa_offset_applied``,
    while raster:bands state -0.1 on every item (as Earth Search's do).
    """
    item = json.loads(json.dumps(item))
    p = item["properties"]
    tile = p.pop("s2:mgrs_tile")
    applied = p["s2:processing_baseline"] >= "04.00"
    p.update({"platform": p["platform"].lower(), "mgrs:utm_zone": int(tile[:2]), "mgrs:latitude_band": tile[2],
              "mgrs:grid_square": tile[3:], "earthsearch:boa_offset_applied": applied})
    day = p["datetime"][:10].replace("-", "")
    item["id"] = f"{item['id'][:3]}_{tile}_{day}_0_L2A"
    assets = {}
    for key, a in item["assets"].items():
        rel = Path(a["href"]).relative_to(world)
        dst = root / "es" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(a["href"]) as src:
            prof, data = src.profile, src.read()
        if key != "SCL" and applied:
            data = np.where(data > 0, np.maximum(data.astype(np.int32) - 1000, 1), 0).astype(data.dtype)
        with rasterio.open(dst, "w", **prof) as out:
            out.write(data)
        a["href"] = f"{url}/es/{rel}"
        if key != "SCL":
            a["raster:bands"] = [{"nodata": 0, "scale": 0.0001, "offset": -0.1, "data_type": "uint16"}]
        assets[ES_KEYS[key]] = a
    item["assets"] = assets
    return item


@pytest.fixture(scope="module")
def providers(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory):
    """Both APIs (Planetary Computer's lacking one day) and their asset files on one asset server."""
    root = tmp_path_factory.mktemp("providers")
    shutil.copytree(tiny_world / S2, root / "pc" / S2)
    items = [json.loads(ln) for ln in (tiny_world / f"{S2}.ndjson").read_text().splitlines()]
    assert {it["properties"]["s2:processing_baseline"] >= "04.00" for it in items} == {True, False}
    with AssetServer(root) as assets, FaultProxy(assets.url, rewrite=False) as proxy:
        pc = [_pc_item(it, tiny_world, proxy.url) for it in items]
        es = [_es_item(it, root, tiny_world, proxy.url) for it in items]
        for name, rows in (("pc-full", pc), ("pc", [i for i in pc if MISSING not in i["id"]]), ("es", es)):
            (root / f"{name}.ndjson").write_text("".join(json.dumps(i) + "\n" for i in rows))
        with rustac_api([root / "pc.ndjson"]) as pc_url, rustac_api([root / "pc-full.ndjson"]) as full_url, \
                rustac_api([root / "es.ndjson"]) as es_url:
            yield {"pc": pc_url, "pc-full": full_url, "es": es_url, "proxy": proxy, "items": items}


def _catalog(tmp: Path, tiny_catalog: Path, sources: list[dict]) -> Path:
    spec = yaml.safe_load((tiny_catalog / f"{S2}.yaml").read_text())
    spec.pop("source")
    spec["sources"] = sources
    cat = tmp / "catalog"
    cat.mkdir(parents=True, exist_ok=True)
    (cat / f"{S2}.yaml").write_text(yaml.safe_dump(spec))
    return cat


def _pc(url: str) -> dict:
    return {"type": "stac-api", "name": "pc", "url": url, "collection": S2, "allow_private_hosts": True,
            "timeout_s": 3, "max_retries": 1}


def _es(url: str) -> dict:
    return {"type": "stac-api", "name": "es", "url": url, "collection": S2, "allow_private_hosts": True,
            "assets": ES_KEYS, "timeout_s": 3, "max_retries": 1}


def _build(tmp: Path, tiny_recipe: Path, tiny_region: Path, catalog: Path, name: str) -> tuple[int, Path]:
    rec = yaml.safe_load(tiny_recipe.read_text())
    rec.update(catalog=str(catalog), sensors={S2: rec["sensors"][S2]})
    rec.pop("labels", None)
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(rec))
    out = tmp / f"{name}.zarr"
    code = main(["build", "--region", str(tiny_region), "--recipe", str(tmp / f"{name}.yaml"), "--out", str(out),
                 "--quiet", "--no-cache"])
    return code, out


def _pixels(store: Path) -> tuple[np.ndarray, np.ndarray]:
    g = zarr.open_group(str(store), mode="r")[S2]
    return np.asarray(g["image"][:]), np.asarray(g["valid"][:])


def _same_pixels(a: Path, b: Path, exact: bool = True) -> None:
    """Equal coverage, and equal values (``exact``) or within 1 DN: Earth Search's files hold the
    offset applied in integers (DN - 1000, clipped at 1 where ESA's DN is below 1000), so a few
    bilinear samples next to such pixels, or on a rounding edge, differ by 1 DN.
    """
    (x, vx), (y, vy) = _pixels(a), _pixels(b)
    assert np.array_equal(vx, vy)
    d = np.abs(x.astype(np.int64) - y.astype(np.int64))
    if exact:
        assert d.max() == 0
    else:
        assert d.max() <= 1 and (d == 0).mean() > 0.999


def test_each_provider_alone_gives_the_demo_pixels(providers, tiny_catalog: Path, tiny_recipe: Path,
                                                   tiny_region: Path, tiny_store: Path, tmp_path: Path) -> None:
    """The same scenes through either provider, each read by the product rules from its own metadata
    (offset in the files vs applied by the provider), give the same stored bytes.
    """
    for name, src in (("pc", _pc(providers["pc-full"])), ("es", _es(providers["es"]))):
        code, store = _build(tmp_path / name, tiny_recipe, tiny_region,
                             _catalog(tmp_path / name, tiny_catalog, [src]), name)
        assert code == 0
        _same_pixels(store, tiny_store, exact=name == "pc")


def test_merged_providers_build_every_chip_once_and_name_the_provider(
        providers, tiny_catalog: Path, tiny_recipe: Path, tiny_region: Path, tiny_store: Path, tmp_path: Path) -> None:
    from msc_france.config import load_catalog, load_recipe
    from msc_france.plan import make_plan
    from msc_france.regions import parse_region

    cat = _catalog(tmp_path, tiny_catalog, [_pc(providers["pc"]), _es(providers["es"])])
    code, store = _build(tmp_path, tiny_recipe, tiny_region, cat, "merged")
    assert code == 0
    _same_pixels(store, tiny_store, exact=False)
    index = gpd.read_parquet(store / "index.parquet")
    on_tdj = index["item_ids_sentinel_2_l2a"].map(lambda ids: "_31TDJ_" in ids[0] or "_T31TDJ_" in ids[0])
    used = index["provider_sentinel_2_l2a"]
    assert on_tdj.any() and (~on_tdj).any()
    assert (used == np.where(on_tdj, "es", "pc")).all()
    # The plan holds each scene once (as many as Earth Search alone serves), the PC copy with the ES
    # copy attached.
    recipe = load_recipe(str(tmp_path / "merged.yaml"))
    plan = make_plan(parse_region(str(tiny_region)), recipe, load_catalog(str(cat)), use_cache=False)
    alone = make_plan(parse_region(str(tiny_region)), recipe,
                      load_catalog(str(_catalog(tmp_path / "es", tiny_catalog, [_es(providers["es"])]))),
                      use_cache=False)
    assert plan.items_found[S2] == alone.items_found[S2] >= 4
    kept = {i.id: i for cands in plan.candidates.values() for c in cands for i in c.items}
    for it in kept.values():
        prov = it.properties["msc_france:provider"]
        assert prov == ("es" if it.id == f"S2B_31TDJ_{DAY}_0_L2A" else "pc")
        alts = it.properties.get("msc_france:alternates", [])
        assert [a["properties"]["msc_france:provider"] for a in alts] == ([] if prov == "es" else ["es"])


def test_a_provider_down_leaves_its_chips_to_the_next(providers, tiny_catalog: Path, tiny_recipe: Path,
                                                      tiny_region: Path, tiny_store: Path, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    cat = _catalog(tmp_path, tiny_catalog, [_pc(down), _es(providers["es"])])
    code, store = _build(tmp_path, tiny_recipe, tiny_region, cat, "down")
    assert code == 0
    _same_pixels(store, tiny_store, exact=False)
    assert set(gpd.read_parquet(store / "index.parquet")["provider_sentinel_2_l2a"]) == {"es"}


def test_every_provider_down_is_one_line(providers, tiny_catalog: Path, tiny_recipe: Path, tiny_region: Path,
                                         tmp_path: Path, capsys) -> None:
    cat = _catalog(tmp_path, tiny_catalog, [_pc(f"http://127.0.0.1:{free_port()}"),
                                            _es(f"http://127.0.0.1:{free_port()}")])
    code, store = _build(tmp_path, tiny_recipe, tiny_region, cat, "none")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1
    assert "every provider of sentinel-2-l2a failed: pc: " in err[0] and "; es: " in err[0]
    assert not store.exists()


def test_unreadable_files_fall_back_to_the_same_scene_elsewhere(providers, tiny_catalog: Path, tiny_recipe: Path,
                                                                tiny_region: Path, tiny_store: Path,
                                                                tmp_path: Path, monkeypatch) -> None:
    """Planetary Computer lists a scene whose files answer 404: the chips read Earth Search's copy."""
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    proxy: FaultProxy = providers["proxy"]
    gone = f"/pc/{S2}/S2B_MSIL2A_{DAY}T105031_R051_T31TCJ"
    proxy.always(gone, ("status", 404))
    try:
        cat = _catalog(tmp_path, tiny_catalog, [_pc(providers["pc-full"]), _es(providers["es"])])
        code, store = _build(tmp_path, tiny_recipe, tiny_region, cat, "fallback")
    finally:
        proxy.always(gone, None)
    assert code == 0
    _same_pixels(store, tiny_store, exact=False)
    index = gpd.read_parquet(store / "index.parquet")
    ids = index["item_ids_sentinel_2_l2a"].map(lambda v: v[0])
    used = index["provider_sentinel_2_l2a"]
    assert (ids == f"S2B_31TCJ_{DAY}_0_L2A").any()
    assert (used == np.where(ids.str.endswith("_0_L2A"), "es", "pc")).all()
    assert set(ids[used == "pc"].str[:10]) == {"S2B_MSIL2A"} and ids[used == "pc"].str.contains("T31TDJ").all()


def test_scene_keys_match_across_real_provider_shapes() -> None:
    """Planetary Computer's and Earth Search's items of one Sentinel-2 acquisition (ids and
    properties as those services publish them) are one scene; another day or tile is not.
    """
    pc = {"id": "S2A_MSIL2A_20230701T103631_R008_T31UFU_20230701T200058",
          "properties": {"platform": "Sentinel-2A", "s2:mgrs_tile": "31UFU", "datetime": "2023-07-01T10:46:30.262000Z"}}
    es = {"id": "S2A_31UFU_20230701_0_L2A",
          "properties": {"platform": "sentinel-2a", "mgrs:utm_zone": 31, "mgrs:latitude_band": "U",
                         "mgrs:grid_square": "FU", "datetime": "2023-07-01T10:46:30.262000Z"}}
    c1 = {"id": "S2A_T31UFU_20230701T103631_L2A",
          "properties": {"platform": "sentinel-2a", "grid:code": "MGRS-31UFU", "datetime": "2023-07-01T10:46:31Z"}}
    rules = rules_for(S2)
    assert rules.scene_key(pc) == rules.scene_key(es) == rules.scene_key(c1)
    other = json.loads(json.dumps(es))
    other["properties"]["mgrs:grid_square"] = "FV"
    assert rules.scene_key(other) != rules.scene_key(pc)
    assert mgrs_tile({"id": "S2B_MSIL2A_20210503T105031_R051_T31TCJ_20210503T150000", "properties": {}}) == "31TCJ"
    landsat = rules_for("landsat-c2-l2")
    a = {"id": "LC08_L2SP_196030_20230601_02_T1", "properties": {"landsat:scene_id": "LC81960302023152LGN00"}}
    b = {"id": "LC08_L2SP_196030_20230601_20230607_02_T1_SR", "properties": {"landsat:scene_id": "LC81960302023152LGN00"}}
    assert landsat.scene_key(a) == landsat.scene_key(b)


def test_offset_rules_follow_the_providers_flag(tiny_catalog: Path) -> None:
    """From baseline 04.00: -1000 DN unless Earth Search's flag says its files have it applied;
    raster:bands' -0.1 (stated by Earth Search on every item) decides nothing.
    """
    from msc_france.config import load_catalog

    spec = load_catalog(str(tiny_catalog)).sensor(S2)

    def offset(props: dict) -> float:
        item = {"id": "S2B_31TCJ_20230503_0_L2A", "properties": {"datetime": "2023-05-03T10:50:31Z", **props},
                "assets": {k: {"href": f"/x/{k}.tif", "raster:bands": [{"scale": 0.0001, "offset": -0.1}]}
                           for k in ("B02", "B03", "B04", "B08", "SCL")}}
        return rules_for(S2).parse(spec, item).assets[0].offset

    assert offset({"s2:processing_baseline": "05.09"}) == pytest.approx(-0.1)
    assert offset({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": False}) == pytest.approx(-0.1)
    assert offset({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True}) == 0.0
    assert offset({"s2:processing_baseline": "03.01", "earthsearch:boa_offset_applied": False}) == 0.0
