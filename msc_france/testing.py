"""A tiny real store for your own tests: :func:`tiny_store` builds one from a 2 x 2-chip demo world
(generated offline in seconds, seeded, through exactly the build a real store goes through), so a
downstream project can test its loaders and models against the store format without data.

Example::

    from msc_france.testing import tiny_store

    def test_my_loader(tmp_path):
        store = tiny_store(tmp_path / "tiny.zarr")
        ds = MSCFranceDataset(store, split=None, size=32)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

#: The tiny region: chips (col, row) 589..590 x 6532..6533 of the 960 m grid, near Toulouse.
TINY_REGION_L93 = (565440.0, 6270720.0, 567360.0, 6272640.0)
#: The tiny demo world around it (4 dates, 1 km aerial tiles at 0.5 m).
TINY_WORLD: dict[str, Any] = {
    "seed": 7,
    "bounds_l93": [TINY_REGION_L93[0] - 700, TINY_REGION_L93[1] - 700, TINY_REGION_L93[2] + 700,
                   TINY_REGION_L93[3] + 700],
    "dates": ["2021-05-03", "2021-05-28", "2021-06-22", "2021-07-17"],
    "cloud_cover": [0.7, 0.0, 0.35, 0.1],
    "aerial_date": "2021-06-15",
    "aerial_gsd": 0.5,
    "aerial_tile_m": 1000,
}


def tiny_catalog(out: Path, seed: int = 7) -> Path:
    """A copy of the demo catalog whose world is tiny (``seed`` draws another world)."""
    from msc_france.paths import catalogs_dir

    shutil.copytree(catalogs_dir() / "demo", out)
    (out / "_world.yaml").write_text(yaml.safe_dump({**TINY_WORLD, "seed": seed}))
    return out


def tiny_recipe(out: Path, catalog: Path) -> Path:
    """The demo recipe with 960 m chips, 2 chips per shard and a chip-by-chip split, on ``catalog``."""
    from msc_france.paths import pipelines_dir

    rec = yaml.safe_load((pipelines_dir() / "demo.yaml").read_text())
    rec.update(name="tiny", catalog=str(catalog), chip_size_m=960, chips_per_shard=2)
    # Four chips: split chip by chip (blocks would put them all in one split), with train, val and test.
    rec["split"] = {"train": 0.6, "val": 0.2, "test": 0.2, "salt": "msc-france"}
    out.write_text(yaml.safe_dump(rec))
    return out


def tiny_region(out: Path) -> Path:
    """The tiny region as a GeoPackage in Lambert-93."""
    import geopandas as gpd
    from shapely.geometry import box

    gpd.GeoDataFrame({"name": [out.stem]}, geometry=[box(*TINY_REGION_L93)], crs="EPSG:2154").to_file(out)
    return out


def tiny_store(out: str | Path, seed: int = 7) -> Path:
    """Build a 4-chip store (Sentinel-2, Landsat-8, aerial, labels) at ``out`` and return its path.

    The world and the search caches go to a temporary folder (never the user's cache), removed
    afterwards. Takes about ten seconds on two cores.

    Raises:
        BadInputError: ``out`` exists and is not an empty folder. BuildFailedError: the build failed.
    """
    from msc_france.builder import run_build
    from msc_france.config import load_catalog, load_recipe
    from msc_france.errors import BuildFailedError
    from msc_france.plan import make_plan
    from msc_france.regions import parse_region
    from msc_france.sources.demo_world.cache import ensure_world

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="msc-france-testing-") as tmp:
        t = Path(tmp)
        old = os.environ.get("MSC_FRANCE_CACHE")
        os.environ["MSC_FRANCE_CACHE"] = str(t / "cache")
        try:
            cat = tiny_catalog(t / "catalog", seed)
            ensure_world(load_catalog(str(cat)).world, t / "cache")  # type: ignore[arg-type]
            rec = load_recipe(str(tiny_recipe(t / "recipe.yaml", cat)))
            plan = make_plan(parse_region(str(tiny_region(t / "tiny.gpkg"))), rec, load_catalog(str(cat)))
            summary = run_build(plan, out)
            if summary.failed:
                raise BuildFailedError(f"tiny store {out}: {len(summary.failed)} chip(s) failed")
        finally:
            if old is None:
                os.environ.pop("MSC_FRANCE_CACHE", None)
            else:
                os.environ["MSC_FRANCE_CACHE"] = old
    return out


__all__ = ["TINY_REGION_L93", "TINY_WORLD", "tiny_catalog", "tiny_recipe", "tiny_region", "tiny_store"]
