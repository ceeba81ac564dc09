"""The bad-input catalogue: one line on stderr, a non-zero exit, no traceback, no damage.

Each case leaves an existing store or run untouched. tests/test_cli.py holds the region/recipe
cases of `plan`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
import zarr

from msc_france.cli import main
from tests.conftest import tree_hashes


@pytest.fixture()
def env(tiny_store: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path) -> dict[str, Path]:
    store = tmp_path / "store.zarr"
    shutil.copytree(tiny_store, store)
    run = tmp_path / "run"
    from msc_france.xstars.train import pretrain
    from tests.helpers import train_config as _cfg

    pretrain(_cfg(tiny_store, run, optim__steps=2, run__checkpoint_every=2))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    return {"store": store, "recipe": tiny_recipe, "region": tiny_region, "tmp": tmp_path, "run": run,
            "train": tmp_path / "train.yaml", "ckpt": run / "checkpoints" / "last.pt"}


def _recipe(env: dict[str, Path], **changes) -> str:
    rec = yaml.safe_load(env["recipe"].read_text())
    for k, v in changes.items():
        rec[k] = v
    p = env["tmp"] / f"r{len(list(env['tmp'].glob('r*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(rec))
    return str(p)


def _build(env, *extra: str, out: str | None = None, recipe: str | None = None, region: str | None = None):
    return ["build", "--region", region or str(env["region"]), "--recipe", recipe or str(env["recipe"]),
            "--out", out or str(env["store"]), "--quiet", *extra]


CASES = {
    "bad date in recipe": (lambda e: _build(e, recipe=_recipe(e, time={"start": "2021-02-30", "end": "2021-09-30"})), "time.start"),
    "inverted time window": (lambda e: _build(e, recipe=_recipe(e, time={"start": "2021-09-30", "end": "2021-04-01"})), "before it starts"),
    "unknown sensor": (lambda e: _build(e, recipe=_recipe(e, sensors={"modis": {}})), "unknown sensor 'modis'"),
    "chip size not a multiple of a GSD": (lambda e: _build(e, recipe=_recipe(e, chip_size_m=1000)), "not an integer multiple"),
    "recipe key of the wrong type": (lambda e: _build(e, recipe=_recipe(e, chips_per_shard="many")), "chips_per_shard"),
    "unknown recipe key": (lambda e: _build(e, recipe=_recipe(e, shard_size=4)), "shard_size: unknown key"),
    "empty search result": (lambda e: _build(e, recipe=_recipe(e, time={"start": "2015-01-01", "end": "2015-12-31"})), "no aerial items"),
    "unknown region": (lambda e: _build(e, region="atlantis"), "unknown region 'atlantis'"),
    "malformed bbox": (lambda e: _build(e, region="1.4,43.5,x,43.6"), "malformed bbox"),
    "inverted bbox": (lambda e: _build(e, region="1.5,43.6,1.4,43.5"), "inverted"),
    "bbox outside France": (lambda e: _build(e, region="13.3,52.4,13.5,52.6"), "outside metropolitan France"),
    "output path is a file": (lambda e: _build(e, out=str(e["train"])), "is a file"),
    "output dir is not a store": (lambda e: _build(e, out=str(e["run"])), "not empty and is not an msc-france store"),
    "store of another chip size": (lambda e: _build(e, recipe=_recipe(e, chip_size_m=1920)), "has chip size 960 m"),
    "unknown scheduler": (lambda e: _build(e, "--scheduler", "spark"), "unknown scheduler 'spark'"),
    "unreachable dask scheduler": (lambda e: _build(e, "--scheduler", "tcp://127.0.0.1:9", out=str(e["tmp"] / "n.zarr")), "cannot reach dask scheduler"),
    "zero workers": (lambda e: _build(e, "--workers", "0"), "Invalid value for '--workers'"),
    "validate a missing store": (lambda e: ["validate", str(e["tmp"] / "nope.zarr")], "no store at"),
    "export to a file": (lambda e: ["export", str(e["store"]), "--format", "xstars-folders", "--out", str(e["train"])], "is a file"),
    "export unknown format": (lambda e: ["export", str(e["store"]), "--format", "tfrecord", "--out", str(e["tmp"])], "Invalid value for '--format'"),
    "ingest an empty directory": (lambda e: ["catalog", "ingest", str(e["tmp"] / "run" / "checkpoints"), "--out", str(e["tmp"] / "c")], "no .jp2/.tif/.tiff files"),
    "pretrain: unknown config key": (lambda e: ["pretrain", "--config", str(e["train"]), "--set", "optim.momentum=0.9"], "optim.momentum: unknown key"),
    "pretrain: wrong type": (lambda e: ["pretrain", "--config", str(e["train"]), "--set", "optim.batch_size=big"], "optim.batch_size"),
    "pretrain: malformed --set": (lambda e: ["pretrain", "--config", str(e["train"]), "--set", "optim.steps"], "--set expects key=value"),
    "pretrain: missing store": (lambda e: ["pretrain", "--config", str(e["train"]), "--data", str(e["tmp"] / "none.zarr"), "--out", str(e["tmp"] / "r2")], "no store at"),
    "pretrain: missing config": (lambda e: ["pretrain", "--config", str(e["tmp"] / "none.yaml")], "file not found"),
    "pretrain: band not in store": (lambda e: ["pretrain", "--config", str(e["train"]), "--set", "data.bands=[swir16]", "--out", str(e["tmp"] / "r3")], "no band(s) ['swir16']"),
    "pretrain: run dir of another architecture": (lambda e: ["pretrain", "--config", str(e["train"]), "--set", "model.arch=vit_tiny", "--set", "model.patch_size=16", "--set", "dino.global_size=32", "--set", "dino.local_size=16", "--set", "msad.size=32"], "holds a run with other shapes (model.arch:"),
    "pretrain: missing continual checkpoint": (lambda e: ["pretrain", "--config", "pipelines/continual-xstars.yaml", "--data", str(e["store"]), "--out", str(e["tmp"] / "c1"), "--set", f"continual.checkpoint={e['tmp']}/x.pt"], "checkpoint not found"),
    "pretrain: checkpoint of another architecture": (lambda e: ["pretrain", "--config", "pipelines/continual-xstars.yaml", "--data", str(e["store"]), "--out", str(e["tmp"] / "c2"), "--set", f"continual.checkpoint={e['ckpt']}", "--set", "data.tiles=1", "--set", "data.split=null", "--set", "optim.batch_size=2"], "is a vit_test/8, the config asks for vit_tiny/16"),
    "pretrain: NaN loss": (lambda e: ["pretrain", "--config", str(e["train"]), "--out", str(e["tmp"] / "nan"), "--set", "optim.lr=1e38", "--set", "optim.warmup_steps=0", "--set", "optim.clip_grad=0"], "loss is nan"),
    "eval: missing checkpoint": (lambda e: ["eval", "--checkpoint", str(e["tmp"] / "x.pt"), "--data", str(e["store"])], "checkpoint not found"),
    "eval: not a checkpoint": (lambda e: ["eval", "--checkpoint", str(e["train"]), "--data", str(e["store"])], "cannot read checkpoint"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, env: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    args_fn, msg = CASES[name]
    args = args_fn(env)
    before_store, before_run = tree_hashes(env["store"]), _files(env["run"])
    code = main(args)
    out, err = capsys.readouterr()
    assert code not in (0, 70), (code, err)
    assert msg in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    assert tree_hashes(env["store"]) == before_store  # nothing lost or half-written
    assert _files(env["run"]) == before_run


def _files(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("delta", [1, -1])
def test_store_of_another_format_is_left_alone(env: dict[str, Path], capsys: pytest.CaptureFixture,
                                               delta: int) -> None:
    from msc_france.store import FORMAT_VERSION

    g = zarr.open_group(str(env["store"]), mode="r+")
    meta = dict(g.attrs["msc_france"])
    meta["format_version"] = FORMAT_VERSION + delta
    g.attrs["msc_france"] = meta
    before = tree_hashes(env["store"])
    assert main(_build(env)) == 4
    err = capsys.readouterr().err
    want = ("newer than this msc-france supports" if delta > 0 else "older than this msc-france reads")
    assert f"format version {FORMAT_VERSION + delta}, {want}" in err and len(err.splitlines()) == 1
    assert ("upgrade msc-france" if delta > 0 else "rebuild it") in err
    assert tree_hashes(env["store"]) == before


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def test_read_only_output_directory(env: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    ro = env["tmp"] / "ro"
    ro.mkdir()
    if not (_mount("--bind", str(ro), str(ro)) and _mount("-o", "remount,bind,ro", str(ro))):
        pytest.skip("this machine does not allow bind mounts; a read-only directory cannot be made as root")
    try:
        code = main(_build(env, out=str(ro / "s.zarr")))
    finally:
        subprocess.run(["umount", str(ro)])
    err = capsys.readouterr().err
    assert code in (2, 4) and len(err.strip().splitlines()) == 1
    assert "Read-only file system" in err or "not writable" in err
    assert not (ro / "s.zarr").exists()


def test_full_disk(env: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    small = env["tmp"] / "small"
    small.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)):
        pytest.skip("this machine does not allow tmpfs mounts")
    try:
        code = main(_build(env, out=str(small / "s.zarr")))
        err = capsys.readouterr().err
        assert code in (4, 5), err
        assert "No space left on device" in err or "failed" in err
        assert "Traceback" not in err
        if (small / "s.zarr" / "zarr.json").exists():  # what was written is consistent: not corrupt
            main(["validate", str(small / "s.zarr"), "--no-checksums"])
            assert "CORRUPT" not in capsys.readouterr().out
    finally:
        subprocess.run(["umount", str(small)])


def test_catalogue_is_complete() -> None:
    from tests.test_cli import BAD

    assert len(CASES) + len(BAD) + 3 >= 30
