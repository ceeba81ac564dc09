"""The offline demo world: one seeded synthetic ground truth observed by every sensor.

The ground truth is a set of vector features in Lambert-93 (crop parcels, forests, a river and a
lake, a town with roads and buildings, and bright calibration markers at known coordinates), each
with its own surface-reflectance spectrum. Every sensor observes it the way the real product
does, in its own CRS and pixel grid:

* Sentinel-2 L2A-like: two overlapping UTM 31N tiles at 10 m, area-averaged (5x supersampling)
  and blurred by a PSF, uint16 DN with the baseline >= 04.00 offset where the item says so,
  SCL at 20 m with clouds, shadows, water and vegetation.
* Landsat-8 C2 L2-like: one UTM 31N scene at 30 m, DN = (rho + 0.2) / 2.75e-5, qa_pixel bits.
  (Plus one Landsat-9 scene, which the catalog's platform filter must drop.)
* Aerial (BD ORTHO-like): Lambert-93 tiles at 0.5 m, uint8 R G B NIR, JPEG-compressed.
* WorldCover-like labels: EPSG:4326 at 1/12000 degree.

Clouds are per-date smooth random fields in Lambert-93, sampled by each sensor at its pixel
centres, so a cloud covers the same ground in every sensor that flies that day. Landsat flies on
its own dates (``landsat_dates``) under its own clouds when the world gives them.

The sensors differ the way real ones do, so that telling whether an encoder is sensor-agnostic is
not trivial, and so that no hand-made feature can (version 6; see ``SENSOR_MODELS``):

* every parcel keeps its own calendar (:func:`phenology`): crops sown weeks apart close their
  canopy over the soil, yellow and are harvested on their own days, grassland is mown on its own
  day, so the parcels of one place change colour differently between any two dates, all season
  long, and a per-tile normalisation cannot undo it;
* each sensor acquires on its own dates, so co-located chips of different sensors differ in
  phenology and clouds;
* ground detail only the aerial resolution resolves (:func:`aerial_texture`): tree crowns, crop
  rows, grass texture, building shadows;
* each sensor has its own spectral response, radiometric gain and offset, residual haze and
  noise (Landsat adds detector striping); the aerial camera adds a per-tile gain and a
  non-linear (gamma) DN curve; and every satellite product is mis-registered by a realistic
  fraction of a pixel (S2 tiles by 2-3 m, Landsat by ~7 m).

Everything is written as COGs plus STAC items shaped like Planetary Computer's, into a cache
directory keyed by the world spec, atomically (temp dir + rename) under a file lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity
from shapely.geometry import LineString, Point, box, mapping
from shapely.geometry.base import BaseGeometry

from msc_france.config import DemoWorldSpec
from msc_france.crs import L93, WGS84, reproject_geometry, transformer
from msc_france.grid import PixelGrid

log = logging.getLogger(__name__)

GENERATOR_VERSION = "6"
UTM31 = "EPSG:32631"

# Ground-truth classes: name, spectrum (blue, green, red, nir), WorldCover code, SCL class.
CLASSES: dict[int, tuple[str, tuple[float, float, float, float], int, int]] = {
    1: ("water", (0.05, 0.04, 0.03, 0.02), 80, 6),
    2: ("forest", (0.03, 0.06, 0.03, 0.30), 10, 4),
    3: ("crops", (0.04, 0.08, 0.05, 0.35), 40, 4),
    4: ("grassland", (0.04, 0.07, 0.06, 0.28), 30, 4),
    5: ("bare soil", (0.10, 0.14, 0.18, 0.25), 40, 5),
    6: ("urban ground", (0.09, 0.10, 0.11, 0.18), 50, 5),
    7: ("road", (0.08, 0.09, 0.10, 0.12), 50, 5),
    8: ("building", (0.14, 0.12, 0.13, 0.20), 50, 5),
    9: ("marker", (0.60, 0.60, 0.60, 0.60), 60, 5),
}
MARKER_SIZE_M = 90.0


#: Bare soil over green canopy, per band: what a crop parcel's colour moves towards while the
#: canopy is sparse (spring) and after harvest.
SOIL_OVER_CROP = np.array(CLASSES[5][1]) / np.array(CLASSES[3][1])


def phenology(classes: np.ndarray, date: dt.date, phases: np.ndarray | None = None) -> np.ndarray:
    """(n, 4) multipliers of each feature's spectrum on ``date``.

    Every parcel keeps its own calendar (``phases``, days: a crop's offset from the reference
    calendar, a meadow's mowing day), so the parcels of one place change colour *differently*
    from one date to the next, all season long: on the reference calendar a crop's canopy closes
    over the soil in April-May (red and green fall, NIR rises), yellows from late June and is
    harvested in July (bright, soil-like stubble); the demo world's parcels run up to two months
    either side of it. Grass dries through the summer and is bright and yellow for three weeks
    after mowing; forests barely change.
    """
    doy = float(date.timetuple().tm_yday)
    ph = np.zeros(len(classes), np.float32) if phases is None else np.asarray(phases, np.float32)
    m = np.ones((len(classes), 4), np.float32)
    crops = classes == 3
    d = doy - ph[crops]
    cover = 1 / (1 + np.exp(-(d - 135) / 10))  # canopy closure over the soil
    yellow = np.clip((d - 175) / 25, 0, 1)
    harvested = np.clip((d - 200) / 12, 0, 1)
    canopy = (cover * (1 - harvested))[:, None]
    senescent = np.stack([1 + 0.5 * yellow, 1 + 0.6 * yellow, 1 + 1.6 * yellow, 1 - 0.3 * yellow], axis=1)
    stubble = harvested[:, None] * np.array([0.2, 0.3, 0.4, 0.1])  # brighter than the soil beneath
    m[crops] = canopy * senescent + (1 - canopy) * SOIL_OVER_CROP[None] + stubble
    grass = classes == 4
    dry = float(np.clip((doy - 180) / 40.0, 0, 1))
    mown = ((doy >= ph[grass]) & (doy < ph[grass] + 21)).astype(np.float32)  # phase 0: never in season
    m[grass] = np.array([1.0 + 0.4 * dry, 1.0 + 0.2 * dry, 1.0 + 0.9 * dry, 1.0 - 0.35 * dry])[None] + np.outer(
        mown, [0.6, 0.5, 1.0, -0.3])
    green = float(np.exp(-(((doy - 165) / 35.0) ** 2)))
    m[classes == 2] = np.array([1.0, 1.0, 1.0, 0.95 + 0.05 * green])
    return m


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
# A 4 x 4 lattice of calibration targets over the world (fractions of its extent).
MARKER_FRACTIONS = tuple((fx, fy) for fy in (0.2, 0.4, 0.6, 0.8) for fx in (0.2, 0.4, 0.6, 0.8))


@dataclass(frozen=True)
class Feature:
    """One ground-truth polygon with its class and reflectance spectrum."""

    geometry: BaseGeometry
    cls: int
    spectrum: tuple[float, float, float, float]
    phase: float = 0.0  # days: a crop's calendar offset, a grassland's mowing day (see phenology)


# --------------------------------------------------------------------------- ground truth


def make_features(spec: DemoWorldSpec) -> tuple[list[Feature], list[tuple[float, float]]]:
    """The seeded vector ground truth (later features overwrite earlier ones) and marker centres."""
    rng = np.random.default_rng(spec.seed)
    x0, y0, x1, y1 = spec.bounds_l93
    w, h = x1 - x0, y1 - y0
    feats: list[Feature] = []

    def add(geom: BaseGeometry, cls: int, gain: float = 1.0, tint: np.ndarray | None = None,
            phase: float = 0.0) -> None:
        base = np.array(CLASSES[cls][1]) * gain
        if tint is not None:
            base = base * tint
        r, g, b, n = (float(v) for v in np.clip(base, 0.005, 0.95))
        feats.append(Feature(geom, cls, (r, g, b, n), phase))

    # Agricultural background: a jittered grid of parcels split into strips.
    cell = 320.0
    for gx in np.arange(x0 - cell, x1 + cell, cell):
        for gy in np.arange(y0 - cell, y1 + cell, cell):
            n = int(rng.integers(1, 4))
            vertical = rng.random() < 0.5
            cuts = np.sort(rng.uniform(0.2, 0.8, n - 1)) if n > 1 else np.array([])
            edges = np.concatenate([[0.0], cuts, [1.0]])
            for a, b in zip(edges[:-1], edges[1:], strict=True):
                if vertical:
                    g = box(gx + a * cell, gy, gx + b * cell, gy + cell)
                else:
                    g = box(gx, gy + a * cell, gx + cell, gy + b * cell)
                cls = int(rng.choice([3, 4, 5, 2], p=[0.36, 0.28, 0.1, 0.26]))
                # Crops: each parcel up to two months either side of the reference calendar, so
                # parcels pass their transitions all through the season; grassland: mown on its own day.
                phase = float(rng.uniform(-60, 60)) if cls == 3 else float(rng.uniform(120, 260))
                add(g, cls, gain=float(rng.uniform(0.85, 1.15)), tint=rng.uniform(0.93, 1.07, 4), phase=phase)
    # Forests: irregular blobs.
    for _ in range(max(5, int(round(w * h / 14e6)))):
        cx, cy = x0 + rng.uniform(0.05, 0.95) * w, y0 + rng.uniform(0.05, 0.95) * h
        blob = shapely.union_all(
            [Point(cx + rng.normal(0, 350), cy + rng.normal(0, 350)).buffer(rng.uniform(200, 500)) for _ in range(6)]
        )
        add(blob, 2, gain=float(rng.uniform(0.9, 1.1)))
    # A lake and a meandering river.
    lake = affinity.rotate(affinity.scale(Point(0, 0).buffer(1.0), 420, 240), 25)
    add(affinity.translate(lake, x0 + 0.25 * w, y0 + 0.72 * h), 1)
    add(affinity.translate(affinity.rotate(lake, 70), x0 + 0.8 * w, y0 + 0.2 * h), 1)
    xs = np.arange(x0 - 500, x1 + 500, 40.0)
    ys = y0 + 0.35 * h + 0.14 * h * np.sin(2 * np.pi * (xs - x0) / (0.7 * w)) + 0.04 * h * np.sin(xs / 370.0)
    add(LineString(np.column_stack([xs, ys])).buffer(32), 1)
    # Towns: urban ground, a road grid, buildings in the blocks (a town and a smaller village).
    for fx, fy, fw, fh in ((0.55, 0.55, 0.22, 0.18), (0.12, 0.18, 0.12, 0.1)):
        _town(add, rng, x0 + fx * w, y0 + fy * h, fw * w, fh * h)
    add(LineString([(x0 - 500, y0 + 0.2 * h), (x1 + 500, y0 + 0.9 * h)]).buffer(11), 7)
    # Calibration markers at known coordinates (bright 90 m squares), burnt last.
    markers = []
    for fx, fy in MARKER_FRACTIONS:
        mx, my = x0 + fx * w, y0 + fy * h
        markers.append((float(mx), float(my)))
        half = MARKER_SIZE_M / 2
        add(box(mx - half, my - half, mx + half, my + half), 9)
    return feats, markers


def _town(add: Callable[..., None], rng: np.random.Generator, tx0: float, ty0: float, tw: float,
          th: float) -> None:
    """Urban ground, a road grid and buildings in its blocks."""
    add(box(tx0, ty0, tx0 + tw, ty0 + th), 6)
    block = 160.0
    for bx in np.arange(tx0, tx0 + tw, block):
        for by in np.arange(ty0, ty0 + th, block):
            for ix in range(3):
                for iy in range(3):
                    if rng.random() < 0.2:
                        continue
                    sx, sy = rng.uniform(14, 34, 2)
                    px = bx + 12 + ix * 48 + rng.uniform(0, 48 - min(sx, 46))
                    py = by + 12 + iy * 48 + rng.uniform(0, 48 - min(sy, 46))
                    roof = np.array([1.0, 1.0, 1.0, 1.0]) if rng.random() < 0.5 else np.array([0.7, 0.75, 1.25, 1.1])
                    add(box(px, py, px + sx, py + sy), 8, gain=float(rng.uniform(0.85, 1.2)), tint=roof)
    for bx in np.arange(tx0, tx0 + tw + 1, block):
        add(box(bx - 5, ty0, bx + 5, ty0 + th), 7)
    for by in np.arange(ty0, ty0 + th + 1, block):
        add(box(tx0, by - 5, tx0 + tw, by + 5), 7)


@dataclass
class Renderer:
    """Rasterises the ground truth onto any pixel grid (any CRS), with area averaging."""

    features: list[Feature]

    def __post_init__(self) -> None:
        self.spectra = np.zeros((len(self.features) + 1, 4), np.float32)
        self.classes = np.zeros(len(self.features) + 1, np.uint8)
        self.phases = np.zeros(len(self.features) + 1, np.float32)
        for i, f in enumerate(self.features, start=1):
            self.spectra[i] = f.spectrum
            self.classes[i] = f.cls
            self.phases[i] = f.phase
        self._tree = shapely.STRtree([f.geometry for f in self.features])
        self._cache: dict[str, list[BaseGeometry]] = {}

    def _geoms_in(self, crs: str) -> list[BaseGeometry]:
        if crs not in self._cache:
            geoms = [f.geometry for f in self.features]
            self._cache[crs] = geoms if crs == L93 else [reproject_geometry(g, L93, crs, densify_m=50) for g in geoms]
        return self._cache[crs]

    def feature_ids(self, grid: PixelGrid) -> np.ndarray:
        """Feature index (1-based, 0 = none) at each pixel centre of ``grid``."""
        minx, miny, maxx, maxy = grid.bounds
        area = box(minx, miny, maxx, maxy)
        area_l93 = reproject_geometry(area, grid.crs, L93, densify_m=None) if grid.crs != L93 else area
        idx = np.sort(self._tree.query(area_l93.buffer(100)))
        geoms = self._geoms_in(grid.crs)
        shapes = ((geoms[i], int(i) + 1) for i in idx)
        return rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0, dtype="int32")

    def fine_ids(self, grid: PixelGrid, supersample: int) -> np.ndarray:
        """Feature ids on ``grid`` subdivided ``supersample`` times (for :meth:`render`)."""
        k = supersample
        t = grid.transform
        fine = PixelGrid(grid.crs, Affine(t.a / k, t.b, t.c, t.d, t.e / k, t.f), grid.height * k, grid.width * k)
        return self.feature_ids(fine)

    def render(self, ids: np.ndarray, supersample: int, psf_sigma_px: float,
               spectra: np.ndarray | None = None) -> np.ndarray:
        """Area-averaged reflectance (4, H, W) from :meth:`fine_ids`, with optional per-feature spectra."""
        k = supersample
        table = self.spectra if spectra is None else spectra
        h, w = ids.shape[0] // k, ids.shape[1] // k
        out = np.empty((4, h, w), np.float32)
        for b in range(4):
            band = table[:, b][ids]
            out[b] = band if k == 1 else band.reshape(h, k, w, k).mean(axis=(1, 3))
            if psf_sigma_px > 0:
                out[b] = ndimage.gaussian_filter(out[b], psf_sigma_px, mode="nearest")
        return out

    def seasonal(self, date: dt.date) -> np.ndarray:
        """Per-feature spectra on ``date`` (see :func:`phenology`)."""
        return (self.spectra * phenology(self.classes, date, self.phases)).astype(np.float32)

    def reflectance(self, grid: PixelGrid, supersample: int, psf_sigma_px: float) -> tuple[np.ndarray, np.ndarray]:
        """Area-averaged surface reflectance (4, H, W) and the centre class (H, W) on ``grid``."""
        k = supersample
        ids = self.fine_ids(grid, k)
        return self.render(ids, k, psf_sigma_px), self.classes[ids[k // 2 :: k, k // 2 :: k]]


# --------------------------------------------------------------------------- clouds


@dataclass
class CloudField:
    """A smooth cloud-opacity field on a Lambert-93 lattice; shadows are the field shifted."""

    origin: tuple[float, float]
    spacing: float
    values: np.ndarray
    shadow_offset: tuple[float, float] = (-300.0, 220.0)

    @classmethod
    def make(cls, bounds: tuple[float, float, float, float], cover: float, rng: np.random.Generator) -> CloudField:
        """A field whose opacity > 0.5 over about ``cover`` of ``bounds``."""
        spacing = 40.0
        x0, y0, x1, y1 = bounds
        pad = 3000.0
        nx, ny = int((x1 - x0 + 2 * pad) / spacing) + 1, int((y1 - y0 + 2 * pad) / spacing) + 1
        noise = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), sigma=18)
        noise /= noise.std()
        if cover <= 0:
            vals = np.zeros_like(noise)
        else:
            inner = noise[int(pad / spacing) : -int(pad / spacing), int(pad / spacing) : -int(pad / spacing)]
            thr = np.quantile(inner, 1 - cover)
            vals = np.clip((noise - thr) / 0.35 + 0.5, 0, 1)
        return cls((x0 - pad, y1 + pad), spacing, vals.astype(np.float32))

    def sample(self, x: np.ndarray, y: np.ndarray, shadow: bool = False) -> np.ndarray:
        """Opacity at Lambert-93 points (bilinear); ``shadow`` samples the cast shadow instead."""
        if shadow:
            x, y = x - self.shadow_offset[0], y - self.shadow_offset[1]
        cols = (x - self.origin[0]) / self.spacing
        rows = (self.origin[1] - y) / self.spacing
        return ndimage.map_coordinates(self.values, [rows, cols], order=1, mode="constant", cval=0.0)


def grid_centres_l93(grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
    """Lambert-93 coordinates of every pixel centre of ``grid``."""
    cols, rows = np.meshgrid(np.arange(grid.width) + 0.5, np.arange(grid.height) + 0.5)
    x, y = grid.transform @ (cols, rows)  # elementwise over the arrays
    if grid.crs == L93:
        return np.asarray(x), np.asarray(y)
    return transformer(grid.crs, L93).transform(x, y)


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
            scl = np.array([0] + [CLASSES[k][3] for k in range(1, 10)], np.uint8)[cls20]
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
        qa = np.zeros(g.shape, np.uint16)
        clear = (c < 0.2) & (s < 0.05)
        qa[clear] |= 1 << 6
        qa[cls == 1] |= 1 << 7
        qa[(c >= 0.2) & (c <= 0.5)] |= (1 << 1) | (1 << 8)
        qa[c > 0.5] |= (1 << 3) | (3 << 8)
        qa[(s >= 0.05) & (c < 0.2)] |= (1 << 4) | (3 << 10)
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
    wc = np.array([0] + [CLASSES[k][2] for k in range(1, 10)], np.uint8)[r.classes[ids]]
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
        "classes": {str(k): {"name": v[0], "spectrum": v[1], "worldcover": v[2]} for k, v in CLASSES.items()},
        "generator_version": GENERATOR_VERSION,
    }
    (tmp / "truth.json").write_text(json.dumps(truth, indent=1))
