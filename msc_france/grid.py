"""The Lambert-93 chip grid: chip ids, footprints and per-sensor pixel grids.

The grid is anchored at the origin of EPSG:2154: chip (col, row) covers
``[col * size, (col + 1) * size) x [row * size, (row + 1) * size)`` in metres. Because the chip
size is an integer multiple of every sensor's GSD, each sensor's pixels of a chip are nested
exactly in the chip; no snapping or rounding ever happens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from msc_france.crs import L93
from msc_france.errors import BadInputError

_ID_RE = re.compile(r"^(\d+)m-E(\d{7})-N(\d{7})$")
#: A chip must reach further than this (m) into the region: thinner slivers are touching edges
#: or reprojection round-off (WGS84 coordinates rounded to 1e-9 degree are off by ~0.1 mm).
SLIVER_M = 0.01


@dataclass(frozen=True)
class PixelGrid:
    """An explicit pixel grid: CRS, affine transform (pixel corner) and shape."""

    crs: str
    transform: Affine
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.height, self.width)

    @property
    def res(self) -> float:
        """Pixel size in CRS units (square pixels)."""
        return self.transform.a

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the grid's outer pixel edges."""
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    def xy(self, row: float, col: float) -> tuple[float, float]:
        """CRS coordinates of a pixel's centre."""
        return self.transform @ (col + 0.5, row + 0.5)


@dataclass(frozen=True, order=True)
class Chip:
    """One cell of the chip grid."""

    size_m: int
    col: int
    row: int

    @property
    def id(self) -> str:
        """Stable, human-readable id: chip size and lower-left corner in Lambert-93 metres."""
        return f"{self.size_m}m-E{self.col * self.size_m:07d}-N{self.row * self.size_m:07d}"

    @classmethod
    def from_id(cls, chip_id: str) -> Chip:
        """Parse an id made by :attr:`id`."""
        m = _ID_RE.match(chip_id)
        if not m:
            raise BadInputError(f"malformed chip id '{chip_id}'")
        size, x, y = (int(g) for g in m.groups())
        if x % size or y % size:
            raise BadInputError(f"chip id '{chip_id}' is not on the {size} m grid")
        return cls(size, x // size, y // size)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in Lambert-93 metres."""
        s = self.size_m
        return (self.col * s, self.row * s, (self.col + 1) * s, (self.row + 1) * s)

    @property
    def polygon(self) -> Polygon:
        """Footprint in Lambert-93."""
        return box(*self.bounds)

    def pixel_grid(self, gsd: float) -> PixelGrid:
        """The chip's exact Lambert-93 pixel grid at ``gsd`` metres."""
        n = pixels_per_chip(self.size_m, gsd)
        minx, _, _, maxy = self.bounds
        return PixelGrid(L93, Affine(gsd, 0.0, minx, 0.0, -gsd, maxy), n, n)


def pixels_per_chip(size_m: int, gsd: float) -> int:
    """Pixels along a chip side; refuses sizes that are not an integer multiple of the GSD."""
    n = size_m / gsd
    if abs(n - round(n)) > 1e-9 * max(1.0, n):
        raise BadInputError(f"chip size {size_m} m is not an integer multiple of GSD {gsd:g} m")
    return int(round(n))


def chip_at(x: float, y: float, size_m: int) -> Chip:
    """The chip containing the Lambert-93 point (x, y)."""
    return Chip(size_m, math.floor(x / size_m), math.floor(y / size_m))


def chips_in(geometry: BaseGeometry, size_m: int) -> list[Chip]:
    """Every chip whose footprint overlaps ``geometry`` (Lambert-93) by more than a sliver: the
    chips that intersect the region shrunk by ``SLIVER_M``.

    Sorted by (row, col) so ids come out in a stable order.
    """
    if geometry.is_empty:
        return []
    minx, miny, maxx, maxy = geometry.bounds
    c0, c1 = math.floor(minx / size_m), math.ceil(maxx / size_m)
    r0, r1 = math.floor(miny / size_m), math.ceil(maxy / size_m)
    grid_cols, grid_rows = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
    cols, rows = grid_cols.ravel(), grid_rows.ravel()
    boxes = shapely.box(cols * size_m, rows * size_m, (cols + 1) * size_m, (rows + 1) * size_m)
    core = geometry.buffer(-SLIVER_M)
    if core.is_empty:
        return []
    shapely.prepare(core)
    hit = shapely.intersects(core, boxes)
    area = np.zeros(len(boxes))
    area[hit] = shapely.area(shapely.intersection(boxes[hit], core))
    keep = area > 0
    return [Chip(size_m, int(c), int(r)) for c, r in zip(cols[keep], rows[keep], strict=True)]

