"""``plan`` for all of metropolitan France against a catalog of realistic size.

A static catalog is generated in a temporary directory: Sentinel-2 L2A items on a 109.8 km tile
grid (the MGRS tile size) over France, each tile revisited every 5 days by alternating platforms
from April to September, and Landsat-8 scenes of 185 km every 16 days; item cloud cover is drawn
at random. The planner then ranks every acquisition for every 1,920 m chip of France (about
166,000 chips), in a fresh process whose wall time and peak RSS are measured. Hrefs are never
opened: planning reads only the items.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from shapely.geometry import box, mapping

from msc_france.crs import L93, WGS84, reproject_geometry
from msc_france.paths import catalogs_dir, pipelines_dir
from msc_france.regions import france_outline

SEASON = (dt.date(2022, 4, 1), dt.date(2022, 9, 30))


def _items(sensor: str, tile_m: float, revisit_days: int, platforms: list[str], rng: np.random.Generator,
           outline: Any) -> list[dict[str, Any]]:
    x0, y0, x1, y1 = outline.bounds
    out = []
    for i, x in enumerate(np.arange(x0 - tile_m / 2, x1, tile_m * 0.9)):  # tiles overlap by 10 %
        for j, y in enumerate(np.arange(y0 - tile_m / 2, y1, tile_m * 0.9)):
            fp = box(x, y, x + tile_m, y + tile_m)
            if not fp.intersects(outline):
                continue
            geom = reproject_geometry(fp, L93, WGS84, densify_m=5000)
            day = SEASON[0] + dt.timedelta(days=(i + 2 * j) % revisit_days)  # orbits: tiles differ in phase
            k = 0
            while day <= SEASON[1]:
                when = dt.datetime.combine(day, dt.time(10, 30), dt.UTC)
                iid = f"{sensor}-{i:03d}-{j:03d}-{day:%Y%m%d}"
                out.append({
                    "type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": sensor,
                    "geometry": mapping(geom), "bbox": list(geom.bounds),
                    "properties": {"datetime": when.isoformat(), "platform": platforms[k % len(platforms)],
                                   "eo:cloud_cover": float(rng.uniform(0, 100)), "s2:processing_baseline": "04.00"},
                    "assets": {}, "links": [],
                })
                day += dt.timedelta(days=revisit_days)
                k += 1
    return out


def make_catalog(root: Path, seed: int = 0) -> tuple[Path, Path, dict[str, int]]:
    """Write the static catalog (a directory of sensor YAMLs) and a Sentinel-2 + Landsat-8 recipe."""
    rng = np.random.default_rng(seed)
    outline = france_outline()
    specs = {"sentinel-2-l2a": (109_800.0, 5, ["sentinel-2a", "sentinel-2b"]),
             "landsat-8-c2-l2": (185_000.0, 16, ["landsat-8"])}
    cat = root / "catalog"
    cat.mkdir(parents=True)
    counts = {}
    for sensor, (tile_m, revisit, platforms) in specs.items():
        spec = yaml.safe_load((catalogs_dir() / "default" / f"{sensor}.yaml").read_text())
        items = _items(sensor, tile_m, revisit, platforms, rng, outline)
        counts[sensor] = len(items)
        path = root / f"{sensor}.ndjson"
        path.write_text("".join(json.dumps(it) + "\n" for it in items))
        spec.pop("sources", None)  # one provider: the generated catalog
        spec["source"] = {"type": "static", "collection": sensor, "path": str(path)}
        (cat / f"{sensor}.yaml").write_text(yaml.safe_dump(spec))
    rec = yaml.safe_load((pipelines_dir() / "msc-france.yaml").read_text())
    rec.update(name="france-plan", catalog=str(cat), labels=None,
               sensors={s: v for s, v in rec["sensors"].items() if s in specs})
    rec["time"] = {"start": SEASON[0].isoformat(), "end": SEASON[1].isoformat(),
                   "target": dt.date(2022, 7, 1).isoformat()}
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(rec))
    return cat, recipe, counts


_CHILD = """
import json, sys, time
from msc_france.config import load_catalog, load_recipe
from msc_france.plan import make_plan
from msc_france.regions import Region, france_outline
from shapely.geometry import box
t0 = time.perf_counter()
rec = load_recipe(sys.argv[1])
region = france_outline()
if len(sys.argv) > 2:  # a square of that side (km) in the middle of France (smoke runs)
    x, y, half = region.centroid.x, region.centroid.y, float(sys.argv[2]) * 500
    region = region.intersection(box(x - half, y - half, x + half, y + half))
plan = make_plan(Region("france", region), rec, load_catalog(rec.catalog), use_cache=False)
took = time.perf_counter() - t0
# VmHWM, not ru_maxrss: the latter keeps the forking parent's high-water mark across exec.
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
counts = {k: vars(c) for k, c in plan.counts().items()}
print(json.dumps({"seconds": took, "chips": len(plan.chips), "counts": counts, "peak_rss_mib": hwm / 1024}))
"""


def bench_plan_france(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for docs/benchmarks.md and the raw figures (a fresh process per measurement)."""
    from benchmarks.common import row

    with tempfile.TemporaryDirectory() as tmp:
        cat, recipe, counts = make_catalog(Path(tmp))
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", _CHILD, str(recipe), *(["60"] if quick else [])],
                           capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"plan of France failed: {p.stderr.strip().splitlines()[-1]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(items=counts, wall_s=wall)
    note = (f"{r['chips']:,} chips of 1,920 m; catalog of {counts['sentinel-2-l2a']:,} Sentinel-2 and "
            f"{counts['landsat-8-c2-l2']:,} Landsat-8 items over a season (static, generated)")
    what = "a 60 km square of France (QUICK)" if quick else "all of France"
    rows = [row(f"plan {what}, wall time", r["seconds"], "s", None, "", "< 120 s", False, r["seconds"] < 120, note),
            row(f"plan {what}, peak RSS", r["peak_rss_mib"], "MiB", None, "", "< 2048 MiB", False,
                r["peak_rss_mib"] < 2048, note)]
    return rows, r
