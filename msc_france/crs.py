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


#: EPSG CRSs recognised by equivalence when a file's WKT carries no authority code, with a box
#: of their area of use (in their own coordinates) to test the equivalence on.
KNOWN_PROJECTED = {
    2154: (100_000.0, 6_040_000.0, 1_250_000.0, 7_120_000.0),  # Lambert-93, metropolitan France
    32630: (200_000.0, 4_600_000.0, 800_000.0, 5_700_000.0),  # UTM 30N over France
    32631: (200_000.0, 4_600_000.0, 800_000.0, 5_700_000.0),  # UTM 31N
    32632: (200_000.0, 4_600_000.0, 800_000.0, 5_700_000.0),  # UTM 32N
}


def identify_epsg(wkt: str, tolerance_m: float = 0.01) -> int | None:
    """The EPSG code of a CRS given as WKT, by equivalence rather than by name.

    GDAL's identification is tried first (it recognises e.g. IGN's ``PROJCS["epsg:2154",...
    TOWGS84[0,...]]``); then the CRS is compared numerically with Lambert-93 and the UTM zones
    over France: if a grid of points of the candidate's area maps onto itself within
    ``tolerance_m``, the CRSs are the same (IGN's WKTs with an "unretrievable - using WGS84"
    datum, which neither GDAL nor PROJ identify, agree with EPSG:2154 within a few micrometres).
    """
    import rasterio.crs
    import rasterio.errors
    from pyproj.exceptions import CRSError, ProjError

    try:
        epsg = rasterio.crs.CRS.from_wkt(wkt).to_epsg()
    except rasterio.errors.CRSError:
        return None
    if epsg:
        return int(epsg)
    try:
        crs = CRS.from_wkt(wkt)
    except CRSError:
        return None
    if not crs.is_projected:
        return None
    for code, (x0, y0, x1, y1) in KNOWN_PROJECTED.items():
        xs, ys = np.meshgrid(np.linspace(x0, x1, 5), np.linspace(y0, y1, 5))
        try:
            t = Transformer.from_crs(CRS.from_epsg(code), crs, always_xy=True)
            x, y = t.transform(xs.ravel(), ys.ravel())
        except ProjError:
            continue
        d = np.hypot(np.asarray(x) - xs.ravel(), np.asarray(y) - ys.ravel())
        if np.all(np.isfinite(d)) and float(d.max()) <= tolerance_m:
            return code
    return None
