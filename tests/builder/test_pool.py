"""Each source file opened once per shard task (msc_france/builder/pool.py): the same stored bytes as
opening it for every chip, with fewer requests to the server that holds the files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import rasterio
import yaml

from msc_france.builder.pool import POOL_ENV, DatasetPool
from msc_france.cli import main
from msc_france.paths import catalogs_dir
from tests.conftest import tree_hashes, write_region_file
from tests.servers import AssetServer, items_served_at, rustac_api


def _remote_catalog(tiny_world: Path, tmp: Path, assets_url: str, api: str) -> Path:
    cat = tmp / "catalog"
    cat.mkdir()
    for f in (catalogs_dir() / "demo").glob("*.yaml"):
        if f.name.startswith("_"):
            continue
        spec = yaml.safe_load(f.read_text())
        spec["source"].update(type="stac-api", url=api, allow_private_hosts=True)
        (cat / f.name).write_text(yaml.safe_dump(spec))
    return cat


@pytest.mark.timeout(300)
def test_pooled_reads_store_the_same_bytes_with_fewer_requests(tiny_world: Path, tiny_recipe: Path,
                                                               tiny_region: Path, tiny_store: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with AssetServer(tiny_world) as assets:
        files = items_served_at(tiny_world, ("sentinel-2-l2a", "landsat-c2-l2", "aerial", "esa-worldcover"),
                                assets.url, tmp_path)
        with rustac_api(files) as api:
            rec = yaml.safe_load(tiny_recipe.read_text())
            rec.update(catalog=str(_remote_catalog(tiny_world, tmp_path, assets.url, api)), chips_per_shard=4)
            (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
            counts, opens = {}, {}
            real_open = rasterio.open
            opened: list[str] = []

            def counting_open(fp, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
                opened.append(str(fp))
                return real_open(fp, *args, **kwargs)

            monkeypatch.setattr(rasterio, "open", counting_open)
            for pooled in ("0", "1"):
                monkeypatch.setenv(POOL_ENV, pooled)
                assets.requests.clear()
                opened.clear()
                out = tmp_path / f"pool{pooled}.zarr"
                assert main(["build", "--region", str(tiny_region), "--recipe", str(tmp_path / "r.yaml"), "--out",
                             str(out), "--quiet", "--no-cache", "--workers", "1"]) == 0
                counts[pooled] = len(assets.requests)
                opens[pooled] = sum(1 for f in opened if f.startswith(assets.url))
    assert tree_hashes(tmp_path / "pool0.zarr") == tree_hashes(tmp_path / "pool1.zarr") == tree_hashes(tiny_store)
    # Neighbouring chips of a shard no longer reopen the same files (GDAL's own HTTP cache already
    # spares most repeated requests within a task on files this small: never more with the pool).
    assert opens["1"] < opens["0"], opens
    assert counts["1"] <= counts["0"], counts


def test_real_ign_patches_same_bytes_with_and_without_the_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real BD ORTHO patches, four 24 m chips in one shard (every chip reads both files)."""
    from tests.helpers import realdata

    src = realdata("f5_l93")
    shutil.copytree(src, tmp_path / "delivery")
    assert main(["catalog", "ingest", str(tmp_path / "delivery"), "--out", str(tmp_path / "cat"),
                 "--datetime", "2021-07-01"]) == 0
    spec = yaml.safe_load((catalogs_dir() / "local" / "aerial.yaml").read_text())
    spec["source"]["path"] = str(tmp_path / "cat" / "catalog.json")
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "aerial.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "name": "pool", "catalog": str(tmp_path / "catalog"), "chip_size_m": 24, "chips_per_shard": 4,
        "sensors": {"aerial": {"gsd": 1.5, "max_cloud_cover": 100, "min_valid_fraction": 0.0}},
        "time": {"start": "2000-01-01", "end": "2030-12-31"}}))
    region = write_region_file(tmp_path / "r.gpkg", (792001, 6271201, 792047, 6271247))
    for pooled in ("0", "1"):
        monkeypatch.setenv(POOL_ENV, pooled)
        assert main(["build", "--region", str(region), "--recipe", str(tmp_path / "r.yaml"), "--out",
                     str(tmp_path / f"p{pooled}.zarr"), "--quiet"]) == 0
    assert tree_hashes(tmp_path / "p0.zarr") == tree_hashes(tmp_path / "p1.zarr")


def test_pool_reuses_and_bounds_open_files(tmp_path: Path) -> None:
    import numpy as np
    import rasterio
    from affine import Affine

    names = []
    for i in range(3):
        p = tmp_path / f"{i}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8", crs="EPSG:2154",
                           transform=Affine(1, 0, 0, 0, -1, 4)) as f:
            f.write(np.full((1, 4, 4), i, np.uint8))
        names.append(str(p))
    pool = DatasetPool(max_open=2)
    a = pool.get(names[0])
    assert pool.get(names[0]) is a and pool.opened == 1
    pool.get(names[1])
    pool.get(names[2])  # the least recently used (names[0]) is closed
    assert a.closed and pool.opened == 3
    assert pool.get(names[0]).read(1)[0, 0] == 0 and pool.opened == 4
    pool.drop(names[0])
    pool.close()
