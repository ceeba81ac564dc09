"""Stores on object storage: build to s3:// on a local S3-compatible server (moto), read it back
with info/validate, and train from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from msc_france.cli import main
from tests.conftest import tree_hashes
from tests.servers import free_port

MOTO = str(Path(sys.executable).parent / "moto_server")


@pytest.fixture(scope="module")
def s3():
    port = free_port()
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):  # moto loads its backends on the first request: it can take seconds
        try:
            requests.get(url, timeout=10)
            break
        except requests.RequestException:
            time.sleep(0.05)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fsspec.filesystem("s3").mkdir("msc-bucket")
    try:
        yield "s3://msc-bucket"
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
        proc.terminate()
        proc.wait(10)


@pytest.mark.timeout(300)
def test_build_info_validate_and_train_on_s3(s3: str, tiny_store: Path, tiny_recipe: Path, tiny_region: Path,
                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"{s3}/stores/tiny.zarr"
    args = ["build", "--region", str(tiny_region), "--recipe", str(tiny_recipe), "--out", url, "--quiet"]
    assert main(args) == 0
    assert tree_hashes(url) == tree_hashes(tiny_store)  # the same content as a local build
    assert main(args) == 0 and "skipped 4 already done" in capsys.readouterr().out  # resumable there too
    assert main(["info", url]) == 0 and "4 chips of 960 m" in capsys.readouterr().out
    assert main(["validate", url]) == 0 and "16 chip checksums verified" in capsys.readouterr().out
    import fsspec

    fs = fsspec.filesystem("s3")
    keys = fs.find("msc-bucket/stores/tiny.zarr")
    assert any(k.endswith("index.parquet") for k in keys) and any("_commits/shard-" in k for k in keys)
    assert not any(k.endswith(".build.lock") for k in keys)  # released

    from msc_france.data import MSCFranceDataset
    from msc_france.xstars.train import pretrain
    from tests.helpers import train_config as _cfg

    ds = MSCFranceDataset(url, split=None)
    assert len(ds) == 4 and ds[0]["aerial"]["image"].shape == (4, 640, 640)
    s = pretrain(_cfg(url, tmp_path / "run", optim__steps=2, run__checkpoint_every=2))
    assert len(s.losses) == 2 and (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_missing_remote_store(s3: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", f"{s3}/nope.zarr"]) == 4
    err = capsys.readouterr().err
    assert "no store at s3://msc-bucket/nope.zarr" in err and len(err.splitlines()) == 1


@pytest.mark.timeout(300)
def test_build_from_a_catalog_and_assets_on_s3(s3: str, tiny_world: Path, tiny_store: Path, tiny_recipe: Path,
                                               tiny_region: Path, tmp_path: Path, monkeypatch) -> None:
    """Static item collections and their COGs on S3: the same store as from local files."""
    import json

    import fsspec
    import yaml

    from msc_france.paths import catalogs_dir

    fs = fsspec.filesystem("s3")
    endpoint = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")
    # GDAL's /vsis3/ reads the assets: point it at the local S3 server.
    for k, v in {"AWS_S3_ENDPOINT": endpoint, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}.items():
        monkeypatch.setenv(k, v)
    fs.put(str(tiny_world), "msc-bucket/world", recursive=True)
    cat = tmp_path / "catalog"
    cat.mkdir()
    for f in (catalogs_dir() / "demo").glob("*.yaml"):
        if f.name.startswith("_"):
            continue
        spec = yaml.safe_load(f.read_text())
        coll = spec["source"]["collection"]
        items = json.loads((tiny_world / f"{coll}.json").read_text())
        for it in items["features"]:
            for a in it["assets"].values():
                a["href"] = f"s3://msc-bucket/world/{Path(a['href']).relative_to(tiny_world)}"
        fs.pipe(f"msc-bucket/catalog/{coll}.json", json.dumps(items).encode())
        spec["source"].update(type="static", path=f"{s3}/catalog/{coll}.json")
        (cat / f.name).write_text(yaml.safe_dump(spec))
    rec = yaml.safe_load(tiny_recipe.read_text())
    rec["catalog"] = str(cat)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    out = tmp_path / "from-s3.zarr"
    assert main(["build", "--region", str(tiny_region), "--recipe", str(tmp_path / "r.yaml"), "--out", str(out),
                 "--quiet"]) == 0
    assert tree_hashes(out) == tree_hashes(tiny_store)


@pytest.mark.timeout(120)
def test_an_unreachable_object_store_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """``info s3://bucket/store.zarr`` with the endpoint down: one line naming the store, exit 4 (as
    every STAC source says "unreachable" in one line), never an internal error.
    """
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # an instance of an earlier test would keep its endpoint
    for args in (["info", "s3://bucket/store.zarr"], ["validate", "s3://bucket/store.zarr"]):
        code = main(args)
        err = capsys.readouterr().err
        assert code == 4 and err.count("\n") == 1
        assert "cannot reach store s3://bucket/store.zarr: unreachable" in err and "internal error" not in err
