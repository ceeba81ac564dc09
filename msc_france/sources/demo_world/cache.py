"""The demo world on disk: one directory per world spec, generated once, atomically, under a lock."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pystac

from msc_france.config import DemoWorldSpec
from msc_france.sources.demo_world.sensors import (
    generate_aerial,
    generate_landsat,
    generate_sentinel2,
    generate_worldcover,
)
from msc_france.sources.demo_world.world import CLASSES, MARKER_SIZE_M, CloudField, Renderer, make_features

log = logging.getLogger("msc_france.sources.demo_world")

GENERATOR_VERSION = "6"

# --------------------------------------------------------------------------- the world on disk


def world_key(spec: DemoWorldSpec) -> str:
    """Cache key of a world: its spec and the generator version."""
    payload = json.dumps({"v": GENERATOR_VERSION, **spec.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: Marks ``<cache>/demo`` as msc-france's demo-world cache (see :mod:`msc_france.cleanup`).
CACHE_MARKER = ".msc-france-demo-cache"


def ensure_world(spec: DemoWorldSpec, cache: Path) -> Path:
    """Generate the world into ``cache/demo/<key>`` unless it is there already; return that directory.

    Safe against concurrent callers (file lock) and crashes (temp dir + atomic rename).
    """
    root = cache / "demo"
    target = root / world_key(spec)
    if (target / "truth.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    (root / CACHE_MARKER).touch()  # what `make clean-demo` checks before it removes anything
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "truth.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        km2 = (spec.bounds_l93[2] - spec.bounds_l93[0]) * (spec.bounds_l93[3] - spec.bounds_l93[1]) / 1e6
        log.info(f"generating the demo world ({km2:.0f} km2, once) into {target} "
                 f"(set MSC_FRANCE_CACHE to move it; make clean-demo removes it)")
        t0 = time.perf_counter()
        try:
            _generate(spec, tmp, final=target)
            tmp.rename(target)
            log.info(f"demo world ready in {time.perf_counter() - t0:.0f} s")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _generate(spec: DemoWorldSpec, tmp: Path, final: Path) -> None:
    feats, markers = make_features(spec)
    r = Renderer(feats)
    rng = np.random.default_rng(spec.seed + 1)
    clouds = [CloudField.make(spec.bounds_l93, cc, rng) for cc in spec.cloud_cover]
    l8_clouds = clouds  # one date, one sky: a world whose Landsat flies on the Sentinel-2 dates
    if spec.landsat_dates:
        rng8 = np.random.default_rng(spec.seed + 5)
        l8_clouds = [CloudField.make(spec.bounds_l93, cc, rng8) for cc in spec.landsat_cloud_cover or []]
    steps = {"sentinel-2-l2a": lambda: generate_sentinel2(spec, r, clouds, tmp),
             "landsat-c2-l2": lambda: generate_landsat(spec, r, l8_clouds, tmp),
             "aerial": lambda: generate_aerial(spec, r, tmp),
             "esa-worldcover": lambda: generate_worldcover(spec, r, tmp)}
    collections = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        collections[name] = step()
        log.info(f"  {name}: {len(collections[name])} items in {time.perf_counter() - t0:.0f} s")
    for name, items in collections.items():
        for it in items:  # hrefs point at the final location, not the temp dir
            for a in it.assets.values():
                a.href = str(final / Path(a.href).relative_to(tmp))
        fc = pystac.ItemCollection(items).to_dict(transform_hrefs=False)
        (tmp / f"{name}.json").write_text(json.dumps(fc))
        with open(tmp / f"{name}.ndjson", "w") as f:
            for it in items:
                f.write(json.dumps(it.to_dict(transform_hrefs=False)) + "\n")
    truth = {
        "bounds_l93": list(spec.bounds_l93),
        "markers_l93": markers,
        "marker_size_m": MARKER_SIZE_M,
        "classes": {str(k): {"name": v.name, "spectrum": v.spectrum, "worldcover": v.worldcover} for k, v in CLASSES.items()},
        "generator_version": GENERATOR_VERSION,
    }
    (tmp / "truth.json").write_text(json.dumps(truth, indent=1))
