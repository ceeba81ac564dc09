"""How each demo sensor observes the ground truth, and the files and STAC items it writes (COGs shaped
like Planetary Computer's).
"""

from __future__ import annotations

import datetime as dt
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from scipy import ndimage
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from msc_france.config import DemoWorldSpec
from msc_france.crs import L93, WGS84, reproject_geometry
from msc_france.grid import PixelGrid
from msc_france.sources.demo_world.world import CLASSES, UTM31, CloudField, Renderer, grid_centres_l93


@dataclass(frozen=True)
class SensorModel:
    """How a sensor sees surface reflectance: spectral response (a 4 x 4 mixing of the true
    bands), gain and offset, residual haze per date (added, strongest in blue) and its
    registration error (metres, x and y) against the ground truth.
    """

    response: tuple[tuple[float, float, float, float], ...]
    gain: tuple[float, float, float, float]
    offset: float
    haze: tuple[float, float]  # range of the per-date haze in the blue band
    shift_m: tuple[float, float]

    def observe(self, refl: np.ndarray, haze: float) -> np.ndarray:
        """Sensor reflectance from true reflectance (4, H, W)."""
        mixed = np.tensordot(np.asarray(self.response, np.float32), refl, axes=1)
        scatter = haze * np.array([1.0, 0.72, 0.5, 0.22], np.float32)[:, None, None]
        return mixed * np.asarray(self.gain, np.float32)[:, None, None] + self.offset + scatter


IDENTITY = ((1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 1.0, 0), (0, 0, 0, 1.0))
SENSOR_MODELS = {
    "sentinel-2": SensorModel(IDENTITY, (1.0, 1.0, 1.0, 1.0), 0.0, (0.0, 0.012), (2.4, -1.8)),
    "landsat-8": SensorModel(((0.95, 0.05, 0, 0), (0.04, 0.92, 0.04, 0), (0, 0.08, 0.92, 0), (0, 0, 0.05, 0.95)),
                             (0.95, 0.96, 0.97, 1.04), 0.008, (0.005, 0.03), (-7.0, 5.5)),
    "aerial": SensorModel(((0.8, 0.15, 0.05, 0), (0.12, 0.72, 0.16, 0), (0.02, 0.16, 0.82, 0), (0, 0, 0.12, 0.88)),
                          (1.0, 1.0, 1.0, 1.0), 0.0, (0.0, 0.0), (0.0, 0.0)),
}
#: The aerial camera's DN curve: DN = 255 * (rho * gain / AERIAL_WHITE) ** AERIAL_GAMMA.
AERIAL_WHITE, AERIAL_GAMMA = 0.45, 0.75

# --------------------------------------------------------------------------- writing


def write_cog(path: Path, data: np.ndarray, grid: PixelGrid, nodata: int | None, **creation: object) -> None:
    """Write a (bands, H, W) array as a Cloud-Optimised GeoTIFF."""
    profile = dict(
        driver="COG",
        width=grid.width,
        height=grid.height,
        count=data.shape[0],
        dtype=data.dtype.name,
        crs=grid.crs,
        transform=grid.transform,
        nodata=nodata,
        blocksize=256,
        compress="DEFLATE",
        overview_resampling="average",
    )
    profile.update(creation)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _asset(href: Path, title: str, grid: PixelGrid, roles: list[str], **extra: object) -> pystac.Asset:
    fields = {
        "proj:shape": [grid.height, grid.width],
        "proj:transform": list(grid.transform)[:6],
        "proj:bbox": list(grid.bounds),
        "gsd": grid.res if grid.crs != WGS84 else 10.0,
    }
    fields.update(extra)
    return pystac.Asset(
        str(href), title=title, media_type="image/tiff; application=geotiff; profile=cloud-optimized",
        roles=roles, extra_fields=fields,
    )


def _footprint(grid: PixelGrid) -> BaseGeometry:
    return reproject_geometry(box(*grid.bounds), grid.crs, WGS84, densify_m=None if grid.crs == WGS84 else 500)


def _item(item_id: str, collection: str, grid: PixelGrid, when: dt.datetime, props: dict, exts: list[str]) -> pystac.Item:
    geom = _footprint(grid)
    item = pystac.Item(item_id, mapping(geom), list(geom.bounds), when, dict(props), collection=collection,
                       stac_extensions=exts)
    epsg = int(grid.crs.split(":")[1])
    item.properties["proj:epsg"] = epsg
    item.add_link(pystac.Link("collection", f"demo://collections/{collection}", "application/json"))
    return item


EXT = {
    "eo": "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
}


# --------------------------------------------------------------------------- sensors


def _utm_grid(bounds_l93: tuple[float, float, float, float], res: float, snap: float, offset: float = 0.0,
              frac: tuple[float, float] = (0.0, 1.0), margin: float = 600.0) -> PixelGrid:
    geom = reproject_geometry(box(*bounds_l93), L93, UTM31, densify_m=200)
    minx, miny, maxx, maxy = geom.bounds
    minx = math.floor((minx - margin) / snap) * snap + offset
    maxx = math.ceil((maxx + margin) / snap) * snap + offset
    miny = math.floor((miny - margin) / snap) * snap + offset
    maxy = math.ceil((maxy + margin) / snap) * snap + offset
    w = maxx - minx
    a = minx + math.floor(frac[0] * w / snap) * snap
    b = minx + math.ceil(frac[1] * w / snap) * snap
    return PixelGrid(UTM31, Affine(res, 0, a, 0, -res, maxy), int(round((maxy - miny) / res)), int(round((b - a) / res)))


def _shifted(grid: PixelGrid, shift_m: tuple[float, float], sign: float = 1.0) -> PixelGrid:
    """``grid`` displaced by a registration error: what it shows at a pixel lies ``shift_m`` away."""
    t = grid.transform
    return PixelGrid(grid.crs, Affine(t.a, t.b, t.c + sign * shift_m[0], t.d, t.e, t.f + sign * shift_m[1]),
                     grid.height, grid.width)


def _s2_baseline(date: dt.date, i: int) -> str:
    # Dates before 2022 were processed at baseline 03.xx; a reprocessed archive carries 05.xx
    # (with the -1000 offset). Alternate so both harmonisation paths are exercised.
    return "05.09" if i % 2 == 1 else "03.01"


def generate_sentinel2(spec: DemoWorldSpec, r: Renderer, clouds: list[CloudField], out: Path) -> list[pystac.Item]:
    """Sentinel-2 L2A-like items: two overlapping tiles per date, B02 B03 B04 B08 + SCL."""
    items = []
    rng = np.random.default_rng(spec.seed + 2)
    tiles = {"31TCJ": (0.0, 0.54), "31TDJ": (0.46, 1.0)}
    for tile, frac in tiles.items():
        g10 = _utm_grid(spec.bounds_l93, 10.0, 60.0, frac=frac)
        g20 = PixelGrid(UTM31, Affine(20, 0, g10.transform.c, 0, -20, g10.transform.f), g10.height // 2, g10.width // 2)
        model = SENSOR_MODELS["sentinel-2"]
        sign = 1.0 if tile == "31TCJ" else -0.7  # each tile has its own registration error
        ids = r.fine_ids(_shifted(g10, model.shift_m, sign), 5)
        ids20 = r.feature_ids(g20)
        cls20 = r.classes[ids20]
        x10, y10 = grid_centres_l93(g10)
        x20, y20 = grid_centres_l93(g20)
        for i, (date, cf) in enumerate(zip(spec.dates, clouds, strict=True)):
            c10, s10 = cf.sample(x10, y10), cf.sample(x10, y10, shadow=True)
            haze = float(np.random.default_rng([spec.seed, date.toordinal(), 2]).uniform(*model.haze))
            refl = model.observe(r.render(ids, 5, 0.45, r.seasonal(date)), haze)
            obs = refl * (1 - 0.55 * s10 * (1 - c10)) * (1 - c10) + c10 * 0.62
            obs += 0.004 * rng.standard_normal(obs.shape, dtype=np.float32)
            baseline = _s2_baseline(date, i)
            offset = 1000 if baseline >= "04.00" else 0
            dn = np.clip(np.round(obs * 10000 + offset), 1, 65535).astype(np.uint16)
            c20, s20 = cf.sample(x20, y20), cf.sample(x20, y20, shadow=True)
            scl = np.array([0] + [CLASSES[k].scl for k in range(1, 10)], np.uint8)[cls20]
            scl[(s20 > 0.05) & (c20 < 0.3)] = 3  # cast shadows, down to faint ones
            scl[(c20 > 0.3) & (c20 <= 0.6)] = 8
            scl[c20 > 0.6] = 9
            stamp = f"{date:%Y%m%d}T105031"
            pid = f"S2B_MSIL2A_{stamp}_R051_T{tile}_{date:%Y%m%d}T150000"
            d = out / "sentinel-2-l2a" / pid
            assets = {}
            for b, (key, name, cn) in enumerate([("B02", "Blue", "blue"), ("B03", "Green", "green"),
                                                 ("B04", "Red", "red"), ("B08", "NIR", "nir")]):
                p = d / f"T{tile}_{stamp}_{key}_10m.tif"
                write_cog(p, dn[b : b + 1], g10, 0, predictor=2)
                assets[key] = _asset(p, f"Band {key[1:].lstrip('0')} - {name} - 10m", g10, ["data"],
                                     **{"eo:bands": [{"name": key, "common_name": cn}]})
            p = d / f"T{tile}_{stamp}_SCL_20m.tif"
            write_cog(p, scl[None], g20, 0)
            assets["SCL"] = _asset(p, "Scene classfication map (SCL)", g20, ["data"])
            cloud_pct = float(np.mean(c20 > 0.3) * 100)
            props = {
                "platform": "Sentinel-2B", "constellation": "Sentinel 2", "instruments": ["msi"],
                "s2:mgrs_tile": tile, "s2:processing_baseline": baseline, "s2:product_type": "S2MSI2A",
                "eo:cloud_cover": round(cloud_pct, 4), "sat:relative_orbit": 51,
                "s2:datatake_id": f"GS2B_{stamp}_022000_N{baseline.replace('.', '')}",
            }
            item = _item(pid, "sentinel-2-l2a", g10, dt.datetime.combine(date, dt.time(10, 50, 31), dt.UTC),
                         props, [EXT["eo"], EXT["proj"], EXT["sat"]])
            for k, a in assets.items():
                item.add_asset(k, a)
            items.append(item)
    return items


def _landsat_qa(c: np.ndarray, s: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """QA_PIXEL bits of a Landsat C2 L2 scene from cloud (``c``) and shadow (``s``) fields: clear (6),
    water (7), dilated/medium cloud (1, 8), cloud/high confidence (3, 8-9), shadow (4, 10-11).
    """
    qa = np.zeros(c.shape, np.uint16)
    qa[(c < 0.2) & (s < 0.05)] |= 1 << 6
    qa[cls == 1] |= 1 << 7
    qa[(c >= 0.2) & (c <= 0.5)] |= (1 << 1) | (1 << 8)
    qa[c > 0.5] |= (1 << 3) | (3 << 8)
    qa[(s >= 0.05) & (c < 0.2)] |= (1 << 4) | (3 << 10)
    return qa


def generate_landsat(spec: DemoWorldSpec, r: Renderer, clouds: list[CloudField], out: Path) -> list[pystac.Item]:
    """Landsat-8 C2 L2-like items (one per date of ``spec.landsat_dates``, or of ``spec.dates``
    when it has none, with ``clouds`` of those dates) plus one Landsat-9 item the platform filter
    drops.
    """
    items = []
    rng = np.random.default_rng(spec.seed + 3)
    g = _utm_grid(spec.bounds_l93, 30.0, 30.0, offset=15.0, margin=1500.0)
    model = SENSOR_MODELS["landsat-8"]
    ids = r.fine_ids(_shifted(g, model.shift_m), 10)
    cls = r.classes[ids[5::10, 5::10]]
    x, y = grid_centres_l93(g)
    scale, offset = 2.75e-05, -0.2
    dates = spec.landsat_dates or spec.dates
    plan = [(d, cf, "landsat-8") for d, cf in zip(dates, clouds, strict=True)]
    plan.append((dates[len(dates) // 2] + dt.timedelta(days=8), clouds[len(clouds) // 2], "landsat-9"))
    for date, cf, platform in plan:
        c, s = cf.sample(x, y), cf.sample(x, y, shadow=True)
        haze = float(np.random.default_rng([spec.seed, date.toordinal(), 3]).uniform(*model.haze))
        refl = model.observe(r.render(ids, 10, 0.5, r.seasonal(date)), haze)
        obs = refl * (1 - 0.55 * s * (1 - c)) * (1 - c) + c * 0.6
        obs += 0.005 * rng.standard_normal(obs.shape, dtype=np.float32)
        obs += 0.003 * rng.standard_normal((4, obs.shape[1], 1), dtype=np.float32)  # detector striping, per line
        dn = np.clip(np.round((obs - offset) / scale), 1, 65535).astype(np.uint16)
        qa = _landsat_qa(c, s, cls)
        sat = "LC08" if platform == "landsat-8" else "LC09"
        pid = f"{sat}_L2SP_198030_{date:%Y%m%d}_02_T1"
        d = out / "landsat-c2-l2" / pid
        assets = {}
        for b, (key, sr, title) in enumerate([("blue", "SR_B2", "Blue Band"), ("green", "SR_B3", "Green Band"),
                                              ("red", "SR_B4", "Red Band"), ("nir08", "SR_B5", "Near Infrared Band 0.8")]):
            p = d / f"{pid}_{sr}.TIF"
            write_cog(p, dn[b : b + 1], g, 0, predictor=2)
            assets[key] = _asset(p, title, g, ["data", "reflectance"], **{
                "eo:bands": [{"name": f"OLI_B{sr[-1]}", "common_name": key}],
                "raster:bands": [{"scale": scale, "nodata": 0, "offset": offset, "data_type": "uint16",
                                  "spatial_resolution": 30, "unit": "none"}]})
        p = d / f"{pid}_QA_PIXEL.TIF"
        write_cog(p, qa[None], g, 1)
        assets["qa_pixel"] = _asset(p, "Pixel Quality Assessment Band", g, ["cloud", "cloud-shadow", "snow-ice",
                                    "water-mask"], **{"raster:bands": [{"nodata": 1, "data_type": "uint16",
                                                                        "unit": "bit index", "spatial_resolution": 30}]})
        props = {
            "platform": platform, "instruments": ["oli", "tirs"], "gsd": 30,
            "eo:cloud_cover": round(float(np.mean(c > 0.2) * 100), 2),
            "landsat:wrs_path": "198", "landsat:wrs_row": "030", "landsat:correction": "L2SP",
            "landsat:collection_number": "02", "landsat:collection_category": "T1",
            "proj:shape": [g.height, g.width], "proj:transform": list(g.transform)[:6],
        }
        item = _item(pid, "landsat-c2-l2", g, dt.datetime.combine(date, dt.time(10, 38, 12), dt.UTC), props,
                     [EXT["eo"], EXT["proj"], EXT["raster"]])
        for k, a in assets.items():
            item.add_asset(k, a)
        items.append(item)
    return items


def generate_aerial(spec: DemoWorldSpec, r: Renderer, out: Path, workers: int = 2) -> list[pystac.Item]:
    """BD ORTHO-like tiles: Lambert-93, ``aerial_gsd``, uint8 R G B NIR, named by upper-left km."""
    t = spec.aerial_tile_m
    x0, y0, x1, y1 = spec.bounds_l93
    origins = [(float(tx), float(ty)) for tx in np.arange(math.floor(x0 / t) * t, x1, t)
               for ty in np.arange(math.floor(y0 / t) * t, y1, t)]
    # Rasterising, noise and JPEG/COG encoding release the GIL: threads use both cores.
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda o: _aerial_tile(spec, r, out, *o), origins))


def _aerial_tile(spec: DemoWorldSpec, r: Renderer, out: Path, tx: float, ty: float) -> pystac.Item:
    t, gsd = spec.aerial_tile_m, spec.aerial_gsd
    n = int(round(t / gsd))
    g = PixelGrid(L93, Affine(gsd, 0, tx, 0, -gsd, ty + t), n, n)
    ids = r.fine_ids(g, 1)
    rng = np.random.default_rng([spec.seed, int(tx), int(ty)])
    ground = r.render(ids, 1, 0.6, r.seasonal(spec.aerial_date)) * aerial_texture(r, ids, g, rng)[None]
    refl = SENSOR_MODELS["aerial"].observe(ground, 0.0)
    rgbn = refl[[2, 1, 0, 3]]  # R G B NIR, as BD ORTHO RVB + IRC
    rgbn += 0.008 * rng.standard_normal(rgbn.shape, dtype=np.float32)
    gain = float(rng.uniform(0.88, 1.12))  # mosaic balancing differs from tile to tile
    dn = np.clip(np.round(255 * np.clip(rgbn * gain / AERIAL_WHITE, 0, 1) ** AERIAL_GAMMA), 1, 255).astype(np.uint8)
    name = f"31-{spec.aerial_date.year}-{int(tx / 1000):04d}-{int((ty + t) / 1000):04d}-LA93-0M{int(gsd * 100):02d}"
    p = out / "aerial" / f"{name}.tif"
    write_cog(p, dn, g, 0, compress="JPEG", quality=92, blocksize=512)
    item = _item(name, "aerial", g, dt.datetime.combine(spec.aerial_date, dt.time(11), dt.UTC),
                 {"gsd": gsd, "proj:shape": [n, n], "proj:transform": list(g.transform)[:6],
                  "proj:bbox": list(g.bounds), "providers": [{"name": "msc-france demo world"}]},
                 [EXT["eo"], EXT["proj"]])
    item.add_asset("image", _asset(p, "RGBIR COG tile", g, ["data"], **{"eo:bands": [
        {"name": "Red", "common_name": "red"}, {"name": "Green", "common_name": "green"},
        {"name": "Blue", "common_name": "blue"}, {"name": "NIR", "common_name": "nir"}]}))
    return item


#: Sun towards the south-east at the aerial acquisition: shadows fall this far north and west (m).
SHADOW_M = (4.0, 3.0)


def aerial_texture(r: Renderer, ids: np.ndarray, g: PixelGrid, rng: np.random.Generator) -> np.ndarray:
    """(H, W) reflectance multipliers for the ground detail only the aerial resolution resolves:
    tree crowns (a few metres across), crop rows (3.5 m apart, along or across each parcel), grass
    texture, and the shadows buildings cast. Their area average is about 1, so the 10 m and 30 m
    sensors see the parcels as before; at 1.5 m a tile's texture is its own.
    """
    cls = r.classes[ids]
    gsd = g.res
    tex = np.ones(ids.shape, np.float32)

    def noise(scale_m: float) -> np.ndarray:
        n = ndimage.gaussian_filter(rng.standard_normal(ids.shape).astype(np.float32), scale_m / gsd)
        return n / max(float(n.std()), 1e-6)

    forest = cls == 2
    tex[forest] = np.clip(1 + 0.35 * noise(2.5)[forest], 0.35, 1.7)
    crops = cls == 3
    rows_, cols_ = np.indices(ids.shape)
    along = np.where(ids % 2 == 0, rows_, cols_) * gsd  # each parcel ploughed one way or the other
    tex[crops] = (1 + 0.25 * np.sin(2 * np.pi * along / 3.5))[crops]
    grass = cls == 4
    tex[grass] = (1 + 0.1 * noise(1.0))[grass]
    building = cls == 8
    kr, kc = (max(1, int(round(m / gsd))) for m in SHADOW_M)
    shadow = np.zeros_like(building)
    shadow[:-kr, :-kc] = building[kr:, kc:]
    shadow &= ~building & (cls != 9) & (cls != 1)
    tex[shadow] *= 0.45
    return tex


def generate_worldcover(spec: DemoWorldSpec, r: Renderer, out: Path) -> list[pystac.Item]:
    """A WorldCover-like label raster in EPSG:4326 at 1/12000 degree."""
    res = 1 / 12000
    geom = reproject_geometry(box(*spec.bounds_l93), L93, WGS84, densify_m=200)
    minx, miny, maxx, maxy = geom.bounds
    minx, maxx = math.floor(minx / res - 40) * res, math.ceil(maxx / res + 40) * res
    miny, maxy = math.floor(miny / res - 40) * res, math.ceil(maxy / res + 40) * res
    g = PixelGrid(WGS84, Affine(res, 0, minx, 0, -res, maxy), int(round((maxy - miny) / res)),
                  int(round((maxx - minx) / res)))
    ids = r.feature_ids(g)
    wc = np.array([0] + [CLASSES[k].worldcover for k in range(1, 10)], np.uint8)[r.classes[ids]]
    iid = "ESA_WorldCover_10m_2021_v200_N43E000"
    p = out / "esa-worldcover" / f"{iid}_Map.tif"
    write_cog(p, wc[None], g, 0)
    start = dt.datetime.combine(spec.worldcover_date, dt.time(0), dt.UTC)
    item = _item(iid, "esa-worldcover", g, None, {  # type: ignore[arg-type]
        "start_datetime": start.isoformat().replace("+00:00", "Z"),
        "end_datetime": start.replace(month=12, day=31, hour=23, minute=59, second=59).isoformat().replace("+00:00", "Z"),
        "esa_worldcover:product_version": "2.0.0", "esa_worldcover:product_tile": "N43E000",
        "mission": "sentinel-1, sentinel-2",
    }, [EXT["proj"], EXT["raster"]])
    item.add_asset("map", _asset(p, "Land Cover Classes", g, ["data"], **{
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 10}]}))
    return [item]
