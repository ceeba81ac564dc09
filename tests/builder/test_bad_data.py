"""Bad data: broken assets fail (or flag) exactly the chips that need them, with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from msc_france.cli import main
from msc_france.paths import catalogs_dir
from msc_france.store import Store

TILE = "31-2021-0565-6273-LA93-0M50"  # the aerial tile under the north-west chip only
NW = "960m-E0565440-N6271680"


def _world_copy(tiny_world: Path, tmp: Path, kind: str) -> Path:
    """A static-catalog copy of the tiny world with one aerial tile broken in one way."""
    w = tmp / "world"
    shutil.copytree(tiny_world, w)
    tif = w / "aerial" / f"{TILE}.tif"
    items = json.loads((w / "aerial.json").read_text())
    for it in items["features"]:
        for a in it["assets"].values():
            a["href"] = str(w / Path(a["href"]).relative_to(tiny_world))
    if kind == "truncated":
        data = tif.read_bytes()
        tif.write_bytes(data[: len(data) // 10])  # cuts into the overviews too (reads may use them)
    elif kind == "missing":
        tif.unlink()
    elif kind == "proj-mismatch":
        item = next(it for it in items["features"] if it["id"] == TILE)
        item["assets"]["image"]["proj:transform"][2] += 250.0
    elif kind in ("all-nodata", "two-bands"):
        with rasterio.open(tif) as src:
            profile = src.profile
        profile.update(driver="GTiff", count=4 if kind == "all-nodata" else 2, compress="deflate")
        profile.pop("blocksize", None)
        tif.unlink()
        with rasterio.open(tif, "w", **profile) as dst:
            dst.write(np.zeros((profile["count"], profile["height"], profile["width"]), np.uint8))
    (w / "aerial.json").write_text(json.dumps(items))
    cat = tmp / "catalog"
    cat.mkdir()
    for f in (catalogs_dir() / "demo").glob("*.yaml"):
        if f.name.startswith("_"):
            continue
        spec = yaml.safe_load(f.read_text())
        spec["source"].update(type="static", path=str(w / f"{spec['source']['collection']}.json"))
        (cat / f.name).write_text(yaml.safe_dump(spec))
    return cat


@pytest.mark.parametrize("kind,status,reason", [
    ("truncated", "failed", "cannot read"),
    ("missing", "failed", "cannot read"),
    ("proj-mismatch", "failed", "proj:transform"),
    ("all-nodata", "flagged", "valid fraction 0.6"),
    ("two-bands", "failed", "has 2 band(s); band 4 was asked for"),
])
def test_broken_asset_affects_only_its_chips(kind, status, reason, tiny_world: Path, tiny_recipe: Path,
                                             tiny_region: Path, tmp_path: Path, capsys) -> None:
    cat = _world_copy(tiny_world, tmp_path, kind)
    rec = yaml.safe_load(tiny_recipe.read_text())
    rec["catalog"] = str(cat)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    out = tmp_path / "s.zarr"
    code = main(["build", "--region", str(tiny_region), "--recipe", str(tmp_path / "r.yaml"), "--out", str(out),
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == (5 if status == "failed" else 0), captured.err
    idx = Store.open(out).index().set_index("chip_id")
    assert idx.loc[NW, "status_aerial"] == status
    others = idx.drop(index=NW)
    assert (others[[c for c in idx.columns if c.startswith("status_")]] == "ok").all().all()
    assert (idx.loc[NW, ["status_sentinel_2_l2a", "status_landsat_8_c2_l2", "status_labels"]] == "ok").all()
    failures = json.loads((out / "failures.json").read_text())["chips"]
    mine = [f for f in failures if f["chip_id"] == NW and f["group"] == "aerial"]
    assert len(mine) == 1 and reason in mine[0]["reason"]
    if status == "failed":
        assert f"failed {NW}: aerial:" in captured.out
    valid = Store.open(out).root["aerial"]["valid"][int(idx.loc[NW, "chip_index"])]
    if status == "failed":
        assert valid.sum() == 0  # a failed chip holds no data, never half-written pixels
    else:
        assert abs(valid.mean() - idx.loc[NW, "valid_fraction_aerial"]) < 1e-6 and 0.5 < valid.mean() < 0.7
