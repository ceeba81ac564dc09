"""The build at internet scale: what one shard fetches against the unique source blocks under it,
and chips/s when every request waits 30 or 100 ms, for 1 to 16 build threads.

- **Per shard**: the first shard (16 chips side by side) of the demo region, every sensor's first
  candidate read as a build task reads it (``read_candidate`` inside one ``task_pool``, GDAL's HTTP
  cache cleared first) from a local range server that counts requests and bytes, against the
  *unique* compressed blocks under all 16 chips (a block under several chips counted once) and one
  header read per file. The same without the pool (``MSC_FRANCE_READ_POOL=0``) beside it.
- **Latency**: ``msc-france build --plan`` of 32 chips of the demo region, 2 per shard (16 shards:
  work for 16 threads), its items' hrefs on the range server with 0, 30 or 100 ms before each
  answer, against the same plan on local files; each build in its own process (its peak RSS from
  ``wait4``), chips/s from the build's own summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import rasterio

from benchmarks.readers import SENSORS, CountingServer, _over_http, _window, _world_dir, chip_inputs, demo_plan
from msc_france.builder.pool import POOL_ENV, task_pool
from msc_france.builder.read import read_candidate
from msc_france.builder.warp import clear_http_cache, gdal_env, overview_level
from msc_france.grid import PixelGrid
from msc_france.plan import Plan
from msc_france.products import SourceItem

LATENCIES_MS = (0, 30, 100)
THREADS = (1, 2, 4, 8, 16)


@contextlib.contextmanager
def _pool_setting(on: bool) -> Iterator[None]:
    old = os.environ.get(POOL_ENV)
    os.environ[POOL_ENV] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(POOL_ENV, None)
        else:
            os.environ[POOL_ENV] = old


def block_sizes(parsed: list[SourceItem], grid: PixelGrid) -> dict[tuple[str, int | None, int, int, int], int]:
    """Compressed size of every source block under the chip, keyed by (file, level, plane, row, col)."""
    out: dict[tuple[str, int | None, int, int, int], int] = {}
    hrefs = [(a.href, a.indexes) for it in parsed for a in it.assets] + [(m.href, (1,)) for it in parsed
                                                                         for m in it.masks]
    for href, _ in hrefs:
        with rasterio.open(href) as src:
            level = overview_level(src, grid.res)
        with rasterio.open(href, overview_level=level) if level is not None else rasterio.open(href) as src:
            w = _window(src, grid)
            if not (w.width and w.height):
                continue
            bh, bw = src.block_shapes[0]
            planes = range(1, src.count + 1) if src.interleaving and src.interleaving.name == "BAND" else (1,)
            for row in range(int(w.row_off) // bh, (int(w.row_off + w.height) - 1) // bh + 1):
                for col in range(int(w.col_off) // bw, (int(w.col_off + w.width) - 1) // bw + 1):
                    for b in planes:
                        out[(href, level, b, row, col)] = src.block_size(b, row, col)
    return out


def per_shard(plan: Plan, world: Path, server: CountingServer, chips_per_shard: int = 16) -> dict[str, Any]:
    """Bytes and requests of one shard's reads, pooled and not, against the unique blocks under it."""
    out: dict[str, Any] = {}
    for sensor in SENSORS:
        spec = plan.catalog.sensor(sensor)
        first = {c.id for c in plan.chips[:chips_per_shard]}
        chips = [c for c in chip_inputs(plan, sensor, len(plan.chips)) if c[0].id in first]
        blocks: dict[tuple[str, int | None, int, int, int], int] = {}
        for chip, parsed, _ in chips:
            blocks.update(block_sizes(parsed, chip.pixel_grid(plan.gsds[sensor])))
        files = {k[0] for k in blocks}
        res: dict[str, Any] = {"chips": len(chips), "unique_block_bytes": sum(blocks.values()),
                               "unique_blocks": len(blocks), "files": len(files)}
        for name, on in (("pooled", True), ("per chip", False)):
            clear_http_cache()
            server.reset()
            with _pool_setting(on), rasterio.Env(**gdal_env(spec.source.gdal)), task_pool():
                for chip, parsed, _ in chips:
                    read_candidate(spec, _over_http(parsed, world, server.url), chip.pixel_grid(plan.gsds[sensor]))
            res[name] = {"bytes": server.bytes, "requests": server.requests}
        out[sensor] = res
    return out


def _remote_plan(plan: Plan, n: int, url: str | None, world: Path) -> Plan:
    """The first ``n`` chips of ``plan``, 2 per shard, their items' hrefs on ``url`` (None: local)."""
    recipe = plan.recipe.model_copy(update={"chips_per_shard": 2})
    sensors = {k: v.model_copy(update={"sources": [s.model_copy(update={"allow_private_hosts": True})
                                                   for s in v.sources]}) for k, v in plan.catalog.sensors.items()}
    catalog = plan.catalog.model_copy(update={"sensors": sensors})
    chips = plan.chips[:n]
    keep = {c.id for c in chips}
    moved: dict[int, Any] = {}

    def item(it: Any) -> Any:
        if url is None:
            return it
        if id(it) not in moved:
            c = it.clone()
            for a in c.assets.values():
                a.href = f"{url}/{Path(a.href).relative_to(world)}"
            moved[id(it)] = c
        return moved[id(it)]

    cands = {k: [replace(v, items=tuple(item(i) for i in v.items)) for v in vs]
             for k, vs in plan.candidates.items() if k[0] in keep}
    return Plan(plan.region, recipe, catalog, chips, plan.gsds, cands, plan.items_found)


def _build(plan_file: Path, out: Path, threads: int) -> dict[str, Any]:
    exe = str(Path(sys.executable).parent / "msc-france")
    t0 = time.perf_counter()
    proc = subprocess.Popen([exe, "--quiet", "build", "--plan", str(plan_file), "--out", str(out), "--workers",
                             str(threads), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()[-300:] if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"build failed ({proc.returncode}): {err}")
    summary = json.loads(stdout)
    return {"chips_per_s": summary["built"] / summary["elapsed_s"], "wall_s": time.perf_counter() - t0,
            "peak_rss_mib": usage.ru_maxrss / 1024}


def latency_sweep(plan: Plan, world: Path, quick: bool) -> dict[str, Any]:
    """chips/s and peak RSS per (latency, threads), local files as the baseline."""
    n = min(len(plan.chips), 8 if quick else 32)
    threads = (1,) if quick else THREADS
    latencies = (0, 100) if quick else LATENCIES_MS
    out: dict[str, Any] = {"chips": n, "local": {}, "http": {}}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _remote_plan(plan, n, None, world).write(d / "local.parquet")
        for t in threads:
            out["local"][t] = _build(d / "local.parquet", d / f"local-{t}.zarr", t)
        server = CountingServer(world)
        try:
            _remote_plan(plan, n, server.url, world).write(d / "http.parquet")
            for ms in latencies:
                server.latency_s = ms / 1000
                for t in threads:
                    server.reset()
                    r = _build(d / "http.parquet", d / f"http-{ms}-{t}.zarr", t)
                    r["requests"] = server.requests
                    out["http"][f"{ms}/{t}"] = r
        finally:
            server.close()
    return out


def bench_network(quick: bool, recipe: str = "demo", region: str = "demo") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for docs/benchmarks.md and the raw figures."""
    from benchmarks.common import row

    os.environ["GDAL_NUM_THREADS"] = "1"
    plan = demo_plan(recipe, region)
    world = _world_dir(plan)
    server = CountingServer(world)
    try:
        shard = per_shard(plan, world, server)
    finally:
        server.close()
    rows = []
    for sensor, r in shard.items():
        pooled, ref = r["pooled"], r["unique_block_bytes"]
        rows.append(row(f"bytes per shard over HTTP, {sensor}", pooled["bytes"] / max(1, ref),
                        "x unique blocks", 1.0, "compressed bytes of the unique source blocks under the shard's chips",
                        "<= 1.3x", higher_is_better=False, met=pooled["bytes"] <= 1.3 * ref,
                        note=f"{pooled['bytes'] / 1e6:.2f} MB for {r['chips']} chips; unique blocks {ref / 1e6:.2f} MB; "
                        f"per chip without the pool {r['per chip']['bytes'] / 1e6:.2f} MB"))
        limit = r["unique_blocks"] + r["files"]
        rows.append(row(f"requests per shard over HTTP, {sensor}", pooled["requests"], "requests", limit,
                        "unique blocks + one header read per file", "<= unique blocks + files",
                        higher_is_better=False, met=pooled["requests"] <= limit,
                        note=f"{r['unique_blocks']} unique blocks in {r['files']} files; per chip without the "
                        f"pool {r['per chip']['requests']} requests"))
    sweep = latency_sweep(plan, world, quick)
    best_local = max(v["chips_per_s"] for v in sweep["local"].values())
    for ms in sorted({int(k.split("/")[0]) for k in sweep["http"]}):
        runs = {int(k.split("/")[1]): v for k, v in sweep["http"].items() if int(k.split("/")[0]) == ms}
        t_best = max(runs, key=lambda t: runs[t]["chips_per_s"])
        best = runs[t_best]
        rows.append(row(f"build chips/s at {ms} ms per request (best of {', '.join(map(str, sorted(runs)))} threads)",
                        best["chips_per_s"], "chips/s", best_local, "local files, best thread count",
                        ">= 70% of local" if ms == 100 else "report only",
                        met=(best["chips_per_s"] >= 0.7 * best_local) if ms == 100 else None,
                        note=f"best at {t_best} threads, peak RSS {best['peak_rss_mib']:.0f} MiB; by threads: "
                        + ", ".join(f"{t}: {runs[t]['chips_per_s']:.2f}" for t in sorted(runs))
                        + f"; {sweep['chips']} chips, 2 per shard"))
    return rows, {"per_shard": shard, "latency": sweep}


__all__ = ["bench_network", "block_sizes", "latency_sweep", "per_shard"]
