"""Failing services: a fault-injecting proxy in front of the local STAC API and asset server."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml

from msc_france.cli import main
from msc_france.config import SourceSpec
from msc_france.errors import SourceError
from msc_france.paths import catalogs_dir
from msc_france.sources.base import SearchQuery
from msc_france.sources.stac_api import StacApiSource
from msc_france.store import Store
from tests.conftest import tree_hashes
from tests.servers import AssetServer, FaultProxy, items_served_at, rustac_api

COLLECTIONS = ("sentinel-2-l2a", "landsat-c2-l2", "aerial", "esa-worldcover")


@pytest.fixture(scope="module")
def remote_world(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny world served remotely: assets over HTTP (behind a fault proxy), items in a STAC API
    (behind another), with a catalog pointing at the proxies.
    """
    d = tmp_path_factory.mktemp("remote")
    with AssetServer(tiny_world) as assets, FaultProxy(assets.url, rewrite=False) as asset_proxy:
        files = items_served_at(tiny_world, COLLECTIONS, asset_proxy.url, d)
        with rustac_api(files) as api, FaultProxy(api) as stac_proxy:
            cat = d / "catalog"
            cat.mkdir()
            for f in (catalogs_dir() / "demo").glob("*.yaml"):
                if f.name.startswith("_"):
                    continue
                spec = yaml.safe_load(f.read_text())
                spec["source"].update(type="stac-api", url=stac_proxy.url, timeout_s=2, max_retries=3,
                                      allow_private_hosts=True)
                (cat / f.name).write_text(yaml.safe_dump(spec))
            yield {"catalog": cat, "stac": stac_proxy, "assets": asset_proxy, "api": api}


def _bbox(world: Path):
    from shapely.geometry import box

    from msc_france.crs import L93, WGS84, reproject_geometry

    truth = json.loads((world / "truth.json").read_text())
    return tuple(reproject_geometry(box(*truth["bounds_l93"]), L93, WGS84).bounds)


@pytest.mark.timeout(120)
def test_search_survives_transient_faults(remote_world, tiny_world: Path) -> None:
    proxy: FaultProxy = remote_world["stac"]
    q = SearchQuery("sentinel-2-l2a", _bbox(tiny_world), dt.date(2021, 4, 1), dt.date(2021, 9, 30))
    clean = StacApiSource(SourceSpec(type="stac-api", url=remote_world["api"], collection="sentinel-2-l2a")).search(q)
    spec = SourceSpec(type="stac-api", url=proxy.url, collection="sentinel-2-l2a", timeout_s=2, max_retries=3,
                      page_size=3)
    n0 = proxy.injected
    proxy.add("/search", [("status", 500), ("status", 502), ("status", 503), ("429", 1), ("timeout", 3),
                          ("garble", None), ("truncate", None)])
    items = StacApiSource(spec).search(q)
    assert [i.id for i in items] == [i.id for i in clean]
    assert proxy.injected - n0 == 7


@pytest.mark.timeout(120)
def test_search_gives_up_within_bounded_time(remote_world, tiny_world: Path) -> None:
    proxy: FaultProxy = remote_world["stac"]
    q = SearchQuery("sentinel-2-l2a", _bbox(tiny_world), dt.date(2021, 4, 1), dt.date(2021, 9, 30))
    spec = SourceSpec(type="stac-api", url=proxy.url, collection="sentinel-2-l2a", timeout_s=2, max_retries=2)
    proxy.always("/search", ("status", 503))
    try:
        with pytest.raises(SourceError, match="failed|unreadable"):
            StacApiSource(spec).search(q)
    finally:
        proxy.always("/search", None)


def _recipe(tmp_path: Path, tiny_recipe: Path, catalog: Path) -> Path:
    rec = yaml.safe_load(tiny_recipe.read_text())
    rec["catalog"] = str(catalog)
    p = tmp_path / "remote.yaml"
    p.write_text(yaml.safe_dump(rec))
    return p


@pytest.mark.timeout(300)
def test_build_through_faults_equals_clean_build(remote_world, tiny_store: Path, tiny_recipe: Path,
                                                  tiny_region: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "3")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.2")
    assets: FaultProxy = remote_world["assets"]
    stac: FaultProxy = remote_world["stac"]
    stac.add("/search", [("status", 502), ("429", 1)])
    assets.add(".tif", [("status", 503), ("status", 500), ("429", 1), ("status", 502), ("truncate", None)])
    assets.add("_B04_", [("status", 503), ("timeout", 4)])
    out = tmp_path / "remote.zarr"
    rec = _recipe(tmp_path, tiny_recipe, remote_world["catalog"])
    code = main(["build", "--region", str(tiny_region), "--recipe", str(rec), "--out", str(out), "--quiet",
                 "--no-cache"])
    assert code == 0
    assert assets.injected >= 7
    assert tree_hashes(out) == tree_hashes(tiny_store)


@pytest.mark.timeout(300)
def test_persistent_asset_failure_is_recorded_then_retried(remote_world, tiny_recipe: Path, tiny_region: Path,
                                                            tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "3")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    assets: FaultProxy = remote_world["assets"]
    aerial_tile = "31-2021-0565-6273"  # the aerial tile of the north-west chip only
    assets.always(aerial_tile, ("status", 500))
    out = tmp_path / "partial.zarr"
    rec = _recipe(tmp_path, tiny_recipe, remote_world["catalog"])
    args = ["build", "--region", str(tiny_region), "--recipe", str(rec), "--out", str(out), "--quiet", "--no-cache"]
    try:
        code = main(args)
    finally:
        assets.always(aerial_tile, None)
    captured = capsys.readouterr()
    assert code == 5
    assert "chip(s) failed; rerun with --retry-failed" in captured.err
    failures = json.loads((out / "failures.json").read_text())["chips"]
    failed = [f for f in failures if f["status"] == "failed"]
    assert failed and all(f["group"] == "aerial" and aerial_tile in f["reason"] for f in failed)
    idx = Store.open(out).index()
    assert (idx["status_sentinel_2_l2a"] == "ok").all()
    ok_aerial = idx[idx["status_aerial"] == "ok"]
    assert len(ok_aerial) == 4 - len(failed) and len(ok_aerial) >= 1
    assert main(args) == 0  # failed chips are not retried without --retry-failed...
    assert "skipped 4 already done" in capsys.readouterr().out
    assert main(args + ["--retry-failed"]) == 0  # ...and are with it, now that the asset is back
    assert f"built {len(failed)} chips" in capsys.readouterr().out
    assert (Store.open(out).index()["status_aerial"] == "ok").all()
