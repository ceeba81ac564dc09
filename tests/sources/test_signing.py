"""Planetary Computer signing against a local token endpoint; lazy signing; re-sign on 403."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from msc_france.builder.warp import clear_http_cache, open_raster
from msc_france.errors import SourceError
from msc_france.sources.signing import NoSigner, PlanetaryComputerSigner
from tests.servers import AssetServer, TokenServer, planetary_computer_env

BLOB = "http://demoaccount.blob.core.windows.net/demo-container"


@pytest.fixture()
def tokens():
    with TokenServer() as ts, planetary_computer_env(ts):
        yield ts


def test_non_azure_hrefs_are_left_alone(tokens: TokenServer) -> None:
    s = PlanetaryComputerSigner()
    assert s.sign("/data/x.tif") == "/data/x.tif"
    assert s.sign("https://example.org/x.tif") == "https://example.org/x.tif"
    assert tokens.calls == [] and NoSigner().sign(f"{BLOB}/a.tif") == f"{BLOB}/a.tif"


def test_signing_is_lazy_and_cached(tokens: TokenServer) -> None:
    s = PlanetaryComputerSigner()
    assert tokens.calls == []  # constructing a signer fetches nothing
    a = s.sign(f"{BLOB}/a.tif")
    b = s.sign(f"{BLOB}/b.tif")
    assert a == f"{BLOB}/a.tif?sv=2021-06-08&se=2099-01-01&sp=rl&sig=sig-1"
    assert b.endswith("sig=sig-1")
    assert tokens.calls == ["/api/sas/v1/token/demoaccount/demo-container"]


def test_refresh_fetches_a_new_token(tokens: TokenServer) -> None:
    s = PlanetaryComputerSigner()
    s.sign(f"{BLOB}/a.tif")
    tokens.current = "sig-2"
    assert s.sign(f"{BLOB}/a.tif").endswith("sig=sig-1")  # still cached
    assert s.refresh(f"{BLOB}/a.tif?sig=sig-1").endswith("sig=sig-2")
    assert len(tokens.calls) == 2


def test_token_endpoint_retries_then_fails_clearly(tokens: TokenServer) -> None:
    tokens.fail_next = 1
    s = PlanetaryComputerSigner(max_retries=2, backoff_s=0.01)
    assert s.sign(f"{BLOB}/a.tif").endswith("sig=sig-1")
    tokens.fail_next = 10
    s2 = PlanetaryComputerSigner(max_retries=2, backoff_s=0.01)
    with pytest.raises(SourceError, match="could not get a SAS token .* after 3 attempts"):
        s2.sign(f"{BLOB}/a.tif")


def _cog(path: Path) -> None:
    from affine import Affine

    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16",
                       crs="EPSG:2154", transform=Affine(10, 0, 500000, 0, -10, 6500000), tiled=True,
                       blockxsize=32, blockysize=32) as dst:
        dst.write(np.arange(64 * 64, dtype="uint16").reshape(1, 64, 64))


def test_read_resigns_after_403(tokens: TokenServer, tmp_path: Path) -> None:
    _cog(tmp_path / "x.tif")
    _cog(tmp_path / "y.tif")
    with AssetServer(tmp_path) as assets:
        # GDAL reaches the Azure-looking URL through the local server acting as an HTTP proxy
        # (set for this block only: GDAL keeps proxied connections in its in-process cache).
        s = PlanetaryComputerSigner()
        href = f"{BLOB}/x.tif"
        assets.required_sig = "sig-1"
        with rasterio.Env(GDAL_HTTP_PROXY=f"127.0.0.1:{assets.port}", GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            with open_raster(href, s) as src:
                assert src.read(1)[0, 5] == 5
            # The token expires server-side: the next read gets 403, re-signs and succeeds.
            tokens.current = "sig-2"
            assets.required_sig = "sig-2"
            with open_raster(f"{BLOB}/y.tif", s) as src:  # another file: GDAL caches x.tif's blocks
                assert src.read(1)[1, 0] == 64
        clear_http_cache()
        assert len(tokens.calls) == 2
        assert any("sig=sig-1" in r for r in assets.requests) and any("sig=sig-2" in r for r in assets.requests)


def test_one_token_for_a_multi_chip_build(tokens: TokenServer, tmp_path: Path) -> None:
    """A build asks for one token per container and lifetime, not one per chip and sensor."""
    from msc_france.builder.shard import LayerRule, _build_layer
    from msc_france.config import SensorSpec
    from msc_france.grid import Chip
    from msc_france.products import rules_for
    from msc_france.sources.signing import make_signer
    from msc_france.store import Layer

    make_signer.cache_clear()  # no signer (and token cache) left from another test
    for name in ("a", "b"):
        _cog(tmp_path / f"{name}.tif")
    spec = SensorSpec(name="pc", title="pc", source={"type": "stac-api", "url": "https://example.org/api",
                                                     "collection": "c", "signing": "planetary-computer"},
                      native_gsd=10, default_gsd=10, dtype="uint16", nodata=None,
                      bands=[{"name": "b", "asset": "data", "index": 1}], cloud_cover_property=None)
    rules = rules_for("raster")
    items = [rules.parse(spec, {"id": n, "properties": {"datetime": "2021-06-01T00:00:00Z"},
                                "assets": {"data": {"href": f"{BLOB}/{n}.tif"}}}) for n in ("a", "b")]
    rule = LayerRule(Layer("pc", "pc", 10.0, ("b",), "uint16", False), spec, 0.0)
    chips = [Chip(160, 500000 // 160 + i, 6499360 // 160 + j) for i in range(2) for j in range(2)]
    with AssetServer(tmp_path) as assets:
        assets.required_sig = "sig-1"
        with rasterio.Env(GDAL_HTTP_PROXY=f"127.0.0.1:{assets.port}", GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            for chip in chips:  # 4 chips x 2 candidate items, as build tasks would read them
                res, rec = _build_layer(rule, chip, [(items[0],), (items[1],)], "flag")
                assert rec.status == "ok" and res is not None and res.data.any(), rec
        clear_http_cache()
    assert tokens.calls == ["/api/sas/v1/token/demoaccount/demo-container"]
    assert assets.requests and all("sig=sig-1" in r for r in assets.requests)  # every read was signed
