"""Coordinate reference systems and geometry reprojection shared by every stage."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

#: Lambert-93, the CRS of the chip grid and of every store.
L93 = "EPSG:2154"
WGS84 = "EPSG:4326"


@lru_cache(maxsize=64)
def transformer(src: str, dst: str) -> Transformer:
    """A cached always-xy transformer between two CRS strings."""
    return Transformer.from_crs(CRS.from_user_input(src), CRS.from_user_input(dst), always_xy=True)


def reproject_geometry(geom: BaseGeometry, src: str, dst: str, densify_m: float | None = None) -> BaseGeometry:
    """Reproject a shapely geometry; ``densify_m`` adds vertices first so long edges bend correctly."""
    if src == dst:
        return geom
    if densify_m:
        geom = shapely.segmentize(geom, densify_m)
    t = transformer(src, dst)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
