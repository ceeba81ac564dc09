"""The demo world's ground truth: classes, features, phenology, clouds, and rasterising them onto
any pixel grid.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity
from shapely.geometry import LineString, Point, box
from shapely.geometry.base import BaseGeometry

from msc_france.config import DemoWorldSpec
from msc_france.crs import L93, reproject_geometry, transformer
from msc_france.grid import PixelGrid

UTM31 = "EPSG:32631"

@dataclass(frozen=True)
class LandClass:
    """One ground-truth class: its reflectance and the codes the label and mask products give it."""

    name: str
    spectrum: tuple[float, float, float, float]  # blue, green, red, nir surface reflectance
    worldcover: int  # ESA WorldCover code
    scl: int  # Sentinel-2 scene-classification class


#: The ground-truth classes, by their code in the world's class raster.
CLASSES: dict[int, LandClass] = {
    1: LandClass("water", (0.05, 0.04, 0.03, 0.02), 80, 6),
    2: LandClass("forest", (0.03, 0.06, 0.03, 0.30), 10, 4),
    3: LandClass("crops", (0.04, 0.08, 0.05, 0.35), 40, 4),
    4: LandClass("grassland", (0.04, 0.07, 0.06, 0.28), 30, 4),
    5: LandClass("bare soil", (0.10, 0.14, 0.18, 0.25), 40, 5),
    6: LandClass("urban ground", (0.09, 0.10, 0.11, 0.18), 50, 5),
    7: LandClass("road", (0.08, 0.09, 0.10, 0.12), 50, 5),
    8: LandClass("building", (0.14, 0.12, 0.13, 0.20), 50, 5),
    9: LandClass("marker", (0.60, 0.60, 0.60, 0.60), 60, 5),
}
MARKER_SIZE_M = 90.0


#: Bare soil over green canopy, per band: what a crop parcel's colour moves towards while the
#: canopy is sparse (spring) and after harvest.
SOIL_OVER_CROP = np.array(CLASSES[5].spectrum) / np.array(CLASSES[3].spectrum)


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
        base = np.array(CLASSES[cls].spectrum) * gain
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
