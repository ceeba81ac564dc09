"""The build's read path against what a user would pick instead, and against the machine's limits.

For the same chips, items and chip grids of the demo world, per sensor:

- **ours**: ``builder.read.read_candidate`` (warp every band asset and the product's masks onto the
  chip grid, harmonise, pack);
- **odc-stac**: ``odc.stac.load`` of the same items, bands and mask onto the chip's GeoBox with the
  same resampling; its pixels are converted with the items' scale/offset and checked against ours;
- **ceiling**: rasterio reading only the source window under the chip (at the overview level GDAL's
  warper picks), i.e. decoding the blocks the chip needs and nothing else;
- **bytes and requests**: ours over HTTP from a local range server that counts both, with the
  build's GDAL settings and with HEAD allowed, against the bytes of the source blocks that
  intersect the chip (from the files' tile byte counts).

Everything runs with one thread per reader (``GDAL_NUM_THREADS=1``, odc-stac ``pool=None``).
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from msc_france.builder.pool import task_pool
from msc_france.builder.read import read_candidate
from msc_france.builder.warp import clear_http_cache, gdal_env, overview_level
from msc_france.config import load_catalog, load_recipe
from msc_france.grid import Chip, PixelGrid
from msc_france.plan import Plan, make_plan
from msc_france.products import SourceItem, rules_for
from msc_france.regions import parse_region
from msc_france.sources.signing import make_signer

SENSORS = ("sentinel-2-l2a", "landsat-8-c2-l2", "aerial")


# --------------------------------------------------------------------------- inputs


def demo_plan(recipe: str = "demo", region: str = "demo") -> Plan:
    """The plan of the demo region (the world is generated once into the cache)."""
    rec = load_recipe(recipe)
    return make_plan(parse_region(region), rec, load_catalog(rec.catalog))


def chip_inputs(plan: Plan, sensor: str, n: int) -> list[tuple[Chip, list[SourceItem], list[Any]]]:
    """The first ``n`` chips with a candidate: (chip, parsed items, pystac items) of the best one."""
    spec = plan.catalog.sensor(sensor)
    out = []
    for chip in plan.chips:
        cands = plan.for_chip(chip.id, sensor)
        if not cands:
            continue
        items = list(cands[0].items)
        parsed = [rules_for(spec.product).parse(spec, it.to_dict(transform_hrefs=False)) for it in items]
        out.append((chip, parsed, items))
        if len(out) == n:
            break
    return out


# --------------------------------------------------------------------------- odc-stac


def odc_read(spec: Any, items: list[Any], parsed: list[SourceItem], grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
    """odc-stac's reading of the same chip: (stored-equivalent values (bands, H, W), valid mask).

    Bands are asked by their common names, which odc-stac maps to (asset, band index) from the
    items' ``eo:bands``; a multi-band asset asked by its key would give its first band only.
    """
    import odc.stac
    from odc.geo.geobox import GeoBox

    gbox = GeoBox((grid.height, grid.width), grid.transform, grid.crs)
    names = [b.common_name or b.name for b in spec.bands]
    items = [_describe_bands(it) for it in items]
    ds = odc.stac.load(items, bands=names, geobox=gbox, resampling=spec.resampling, groupby="solar_day",
                       pool=None, chunks=None, fail_on_error=True)
    values = np.zeros((len(spec.bands), grid.height, grid.width), np.float64)
    valid = np.ones(grid.shape, bool)
    conv = {t: (a.scale, a.offset, a.nodata) for a in parsed[0].assets for t in a.targets}
    for t, name in enumerate(names):
        da = ds[name].isel(time=0)
        band = np.asarray(da.values, np.float64)
        nodata = da.attrs.get("nodata", conv[t][2])
        valid &= np.isfinite(band) & (band != nodata if nodata is not None else True)
        values[t] = band * conv[t][0] + conv[t][1]
    stored = np.rint((values - spec.offset) / spec.scale)
    return stored, valid


def _describe_bands(item: Any) -> Any:
    """A copy of ``item`` whose multi-band assets carry ``raster:bands`` read from the file header
    (the demo's aerial items only list ``eo:bands``; odc-stac needs both to see bands 2..n).
    """
    it = item.clone()
    for asset in it.assets.values():
        if "raster:bands" in asset.extra_fields or not asset.href.endswith((".tif", ".tiff")):
            continue
        with rasterio.open(asset.href) as src:
            if src.count > 1:
                asset.extra_fields["raster:bands"] = [{"data_type": d, "nodata": src.nodata} for d in src.dtypes]
    return it


# --------------------------------------------------------------------------- the ceiling


def _window(src: rasterio.io.DatasetReader, grid: PixelGrid) -> Window:
    b = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
    w = from_bounds(*b, transform=src.transform)
    col0, row0 = max(0, math.floor(w.col_off)), max(0, math.floor(w.row_off))
    col1 = min(src.width, math.ceil(w.col_off + w.width))
    row1 = min(src.height, math.ceil(w.row_off + w.height))
    return Window(col0, row0, max(0, col1 - col0), max(0, row1 - row0))


def _assets(parsed: list[SourceItem]) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for it in parsed:
        out += [(a.href, tuple(a.indexes)) for a in it.assets]
        out += [(m.href, (1,)) for m in it.masks]
    return out


def ceiling_read(parsed: list[SourceItem], grid: PixelGrid) -> None:
    """Read and decode only the source windows under the chip, at the level the warper uses."""
    for href, indexes in _assets(parsed):
        with rasterio.open(href) as src:
            level = overview_level(src, grid.res)
        with rasterio.open(href, overview_level=level) if level is not None else rasterio.open(href) as src:
            w = _window(src, grid)
            if w.width and w.height:
                src.read(list(indexes), window=w)


def intersecting_bytes(parsed: list[SourceItem], grid: PixelGrid) -> int:
    """Compressed bytes of the source blocks that intersect the chip (header bytes not counted)."""
    total = 0
    for href, _ in _assets(parsed):
        with rasterio.open(href) as src:
            level = overview_level(src, grid.res)
        with rasterio.open(href, overview_level=level) if level is not None else rasterio.open(href) as src:
            w = _window(src, grid)
            bh, bw = src.block_shapes[0]
            planes = range(1, src.count + 1) if src.interleaving and src.interleaving.name == "BAND" else (1,)
            for row in range(int(w.row_off) // bh, (int(w.row_off + w.height) - 1) // bh + 1):
                for col in range(int(w.col_off) // bw, (int(w.col_off + w.width) - 1) // bw + 1):
                    total += sum(src.block_size(b, row, col) for b in planes)
    return total


# --------------------------------------------------------------------------- bytes over HTTP


class CountingServer:
    """A range-capable HTTP file server that counts requests and the bytes it actually sent, with a
    network you can dial: ``latency_s`` before each answer starts, and a ``bandwidth_bps`` cap on
    what it sends (bytes per second per request); ``log`` holds (start, end, bytes) per request on
    the server's clock.
    """

    def __init__(self, root: Path, latency_s: float = 0.0, bandwidth_bps: float | None = None) -> None:
        owner = self
        self.root, self.requests, self.bytes, self.heads = Path(root), 0, 0, 0
        self.latency_s, self.bandwidth_bps = latency_s, bandwidth_bps
        self.log: list[tuple[float, float, int]] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                t0 = time.perf_counter()
                sent = 0
                path = owner.root / self.path.split("?")[0].lstrip("/")
                with owner.lock:
                    owner.requests += 1
                    owner.heads += head
                if owner.latency_s:
                    time.sleep(owner.latency_s)
                size = path.stat().st_size
                start, end = 0, size - 1
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start, end = int(a), min(int(b), size - 1) if b else size - 1
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                try:
                    if not head:
                        sent = self._body(path, start, end)
                finally:
                    with owner.lock:
                        owner.log.append((t0, time.perf_counter(), sent))

            def _body(self, path: Path, start: int, end: int) -> int:
                sent = 0
                with open(path, "rb") as f:
                    f.seek(start)
                    left = end - start + 1
                    while left > 0:  # in pieces: a client that hangs up stops the count
                        piece = f.read(min(65536, left))
                        if owner.bandwidth_bps:  # the piece arrives once its transfer time has passed
                            time.sleep(len(piece) / owner.bandwidth_bps)
                        try:
                            self.wfile.write(piece)
                        except (BrokenPipeError, ConnectionResetError):
                            return sent
                        with owner.lock:
                            owner.bytes += len(piece)
                        sent += len(piece)
                        left -= len(piece)
                return sent

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset(self) -> None:
        """Zero the counters (before each chip)."""
        with self.lock:
            self.requests = self.bytes = self.heads = 0
            self.log.clear()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()


def _over_http(parsed: list[SourceItem], root: Path, url: str) -> list[SourceItem]:
    from dataclasses import replace

    def h(href: str) -> str:
        return f"{url}/{Path(href).relative_to(root)}"

    return [replace(it, assets=tuple(replace(a, href=h(a.href)) for a in it.assets),
                    masks=tuple(replace(m, href=h(m.href)) for m in it.masks)) for it in parsed]


# --------------------------------------------------------------------------- the benchmark


def bench_readers(quick: bool, recipe: str = "demo", region: str = "demo") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for docs/benchmarks.md and the raw per-sensor figures."""
    os.environ["GDAL_NUM_THREADS"] = "1"
    plan = demo_plan(recipe, region)
    world = _world_dir(plan) if plan.catalog.world else None
    raw: dict[str, Any] = {}
    server = CountingServer(world) if world else None
    try:
        for sensor in SENSORS:
            spec = plan.catalog.sensor(sensor)
            n = (2 if sensor == "aerial" else 4) if quick else (6 if sensor == "aerial" else 12)
            chips = chip_inputs(plan, sensor, n)
            signer = make_signer(spec.source.signing)
            ours_t, odc_t, ceil_t, agree, total_px = [], [], [], 0, 0
            exact_err: list[np.ndarray] = []
            with task_pool():  # ours reads neighbouring chips as one shard task does (builder/pool.py)
                for chip, parsed, items in chips:
                    grid = chip.pixel_grid(plan.gsds[sensor])
                    with rasterio.Env(**gdal_env(spec.source.gdal)):
                        t0 = time.perf_counter()
                        ours = read_candidate(spec, parsed, grid, signer)
                        ours_t.append(time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        ceiling_read(parsed, grid)
                        ceil_t.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    theirs, valid = odc_read(spec, items, parsed, grid)
                    odc_t.append(time.perf_counter() - t0)
                    both = valid & ours.valid.astype(bool)  # covered and clear in ours, not nodata in odc-stac
                    diff = np.abs(ours.data.astype(np.float64) - theirs)[:, both]
                    agree += int((diff <= 1).sum())
                    total_px += diff.size
                    if sensor == "aerial":  # same CRS: the exact area mean is computable with numpy
                        ref, cov = exact_area_mean(parsed, grid, spec)
                        m = cov & ours.valid.astype(bool)
                        exact_err.append(np.abs(ours.data[:, m].astype(np.float64) - ref[:, m]).ravel())
            http: dict[str, Any] = {}
            if server is not None:
                for name, env in (("HEAD off (the previous setting)", {"CPL_VSIL_CURL_USE_HEAD": "NO"}),
                                  ("build settings (HEAD on)", {})):
                    reqs, sent, ref = [], [], []
                    for chip, parsed, _ in chips:
                        grid = chip.pixel_grid(plan.gsds[sensor])
                        remote = _over_http(parsed, world, server.url)
                        clear_http_cache()
                        server.reset()
                        with rasterio.Env(**{**gdal_env(spec.source.gdal), **env}):
                            read_candidate(spec, remote, grid, signer)
                        reqs.append(server.requests)
                        sent.append(server.bytes)
                        ref.append(intersecting_bytes(parsed, grid))
                    http[name] = {"requests_per_chip": statistics.mean(reqs), "bytes_per_chip": statistics.mean(sent),
                                  "intersecting_bytes_per_chip": statistics.mean(ref),
                                  "ratio": sum(sent) / max(1, sum(ref))}
            raw[sensor] = {"chips": len(chips), "ours_s": statistics.median(ours_t), "odc_s": statistics.median(odc_t),
                           "ceiling_s": statistics.median(ceil_t), "agree_1dn": agree / max(1, total_px),
                           "http": http}
            if exact_err:
                e = np.concatenate(exact_err)
                raw[sensor]["vs_exact_area_mean"] = {"mean_abs_dn": float(e.mean()), "within_1dn": float((e <= 1).mean()),
                                                     "pixels": int(e.size)}
    finally:
        if server is not None:
            server.close()
    return _rows(raw), raw


def _world_dir(plan: Plan) -> Path:
    from msc_france.paths import cache_dir
    from msc_france.sources.demo_world import ensure_world

    assert plan.catalog.world is not None
    return ensure_world(plan.catalog.world, cache_dir())


def _rows(raw: dict[str, Any]) -> list[dict[str, Any]]:
    from benchmarks.common import row

    rows = []
    for sensor, r in raw.items():
        rows.append(row(f"read path vs odc-stac, {sensor}", r["odc_s"] / r["ours_s"], "x odc-stac speed",
                        1.0, "odc.stac.load, same items, bands and GeoBox", ">= 2x", True,
                        r["odc_s"] / r["ours_s"] >= 2,
                        f"ours {r['ours_s'] * 1e3:.0f} ms/chip, odc-stac {r['odc_s'] * 1e3:.0f} ms/chip; "
                        f"{r['agree_1dn']:.2%} of pixels within 1 DN of odc-stac; {r['chips']} neighbouring chips "
                        "read as one shard task (files opened once), 1 thread"
                        + (f"; vs the exact area mean (numpy): mean |diff| {r['vs_exact_area_mean']['mean_abs_dn']:.2f} DN"
                           if "vs_exact_area_mean" in r else "")))
        frac = r["ceiling_s"] / r["ours_s"]
        rows.append(row(f"read path vs its ceiling, {sensor}", frac, "of ceiling speed", 1.0,
                        "decode only the source windows under the chip", ">= 50%", True, frac >= 0.5,
                        f"ours {r['ours_s'] * 1e3:.0f} ms/chip, ceiling {r['ceiling_s'] * 1e3:.0f} ms/chip"))
        for name, h in r["http"].items():
            rows.append(row(f"bytes per chip over HTTP, {sensor}, {name}", h["ratio"], "x intersecting blocks",
                            1.0, "compressed bytes of the source blocks under the chip", "<= 1.3x", False,
                            h["ratio"] <= 1.3,
                            f"{h['bytes_per_chip'] / 1e6:.2f} MB and {h['requests_per_chip']:.1f} requests per chip; "
                            f"intersecting blocks {h['intersecting_bytes_per_chip'] / 1e6:.2f} MB"))
    return rows


def exact_area_mean(parsed: list[SourceItem], grid: PixelGrid, spec: Any) -> tuple[np.ndarray, np.ndarray]:
    """The exact area-weighted mean of full-resolution source pixels over each chip pixel, for a
    same-CRS source whose pixel edges and the chip's fall on a common lattice (aerial: 0.75 m
    pixels, 1.5 m chip pixels, offsets in multiples of 0.25 m): numpy only, no GDAL resampling.

    Returns (stored-equivalent values (bands, H, W), covered mask); first item wins, as in a mosaic.
    """
    from fractions import Fraction

    out = np.zeros((len(spec.bands), grid.height, grid.width), np.float64)
    done = np.zeros(grid.shape, bool)
    for it in parsed:
        for a in it.assets:
            with rasterio.open(a.href) as src:
                res = Fraction(abs(src.transform.a)).limit_denominator(1000)
                step = Fraction(grid.res).limit_denominator(1000)
                dx = Fraction(grid.bounds[0] - src.transform.c).limit_denominator(1000)
                dy = Fraction(src.transform.f - grid.bounds[3]).limit_denominator(1000)
                unit = math.gcd(*(f.numerator * (1000 // f.denominator) for f in (res, step, dx, dy))) / 1000
                s, k = int(round(float(res) / unit)), int(round(float(step) / unit))
                ox, oy = int(round(float(dx) / unit)), int(round(float(dy) / unit))
                if ox < 0 or oy < 0:
                    continue  # the chip starts before this tile: the next item covers it
                c0, r0 = ox // s, oy // s
                need_c = (ox % s + grid.width * k + s - 1) // s
                need_r = (oy % s + grid.height * k + s - 1) // s
                w = Window(c0, r0, min(need_c, src.width - c0), min(need_r, src.height - r0))
                data = src.read(list(a.indexes), window=w).astype(np.float64)
            fine = data.repeat(s, axis=1).repeat(s, axis=2)[:, oy % s:, ox % s:]
            h = min(grid.height, fine.shape[1] // k)
            wd = min(grid.width, fine.shape[2] // k)
            block = fine[:, : h * k, : wd * k].reshape(len(a.indexes), h, k, wd, k).mean(axis=(2, 4))
            region = np.zeros(grid.shape, bool)
            region[:h, :wd] = True
            take = region & ~done
            for j, t in enumerate(a.targets):
                vals = np.zeros(grid.shape)
                vals[:h, :wd] = block[j]
                out[t][take] = np.rint((vals[take] * a.scale + a.offset - spec.offset) / spec.scale)
            done |= take
    return out, done
