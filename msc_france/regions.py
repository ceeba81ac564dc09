"""Named regions, bbox and file parsing, and the "inside metropolitan France" check."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import shapely
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from msc_france.crs import L93, WGS84, reproject_geometry
from msc_france.errors import BadInputError, first_line
from msc_france.paths import catalogs_dir

#: What a region name may contain: it names folders and files (exports, previews) and is
#: stored in the index, so it must be one safe path component with no list separator.
_NAME = re.compile(r"^[a-z0-9][a-z0-9 _.\-]{0,127}$")


def check_region_name(name: str) -> str:
    """``name`` if it is a safe region name, else a BadInputError naming the rule it breaks."""
    if not name or name in (".", "..") or ".." in name:
        raise BadInputError(f"region name {name!r} is not allowed: it must not be empty or contain '..'")
    if any(c in name for c in "/\\"):
        raise BadInputError(f"region name {name!r} is not allowed: no path separators")
    if "," in name:
        raise BadInputError(f"region name {name!r} is not allowed: no commas (they separate region lists)")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadInputError(f"region name {name!r} is not allowed: no control characters")
    if not _NAME.match(name):
        raise BadInputError(f"region name {name!r} is not allowed: use lower-case letters, digits, spaces, '_', '-', '.' "
                            "(at most 128, starting with a letter or digit)")
    return name


@dataclass(frozen=True)
class Region:
    """An area of interest: its name and its geometry in Lambert-93 (EPSG:2154).

    The name is validated on construction (:func:`check_region_name`): it becomes file names.
    """

    name: str
    geometry: BaseGeometry

    def __post_init__(self) -> None:
        check_region_name(self.name)

    @property
    def geometry_wgs84(self) -> BaseGeometry:
        """The region's geometry in WGS84 longitude/latitude."""
        return reproject_geometry(self.geometry, L93, WGS84, densify_m=1000)

    @property
    def bbox_wgs84(self) -> tuple[float, float, float, float]:
        """WGS84 bounding box (min lon, min lat, max lon, max lat)."""
        minx, miny, maxx, maxy = self.geometry_wgs84.bounds
        return (minx, miny, maxx, maxy)

    @property
    def area_km2(self) -> float:
        """Area in square kilometres (Lambert-93 is conformal; areas are close to true)."""
        return self.geometry.area / 1e6


@lru_cache(maxsize=4)
def _load_regions(path: str) -> dict[str, dict]:
    """The named regions of ``path`` (the shipped file, or the one ``MSC_FRANCE_CATALOGS`` points to).

    Raises:
        BadInputError: unreadable, truncated, or not a FeatureCollection of named polygons.
    """
    try:
        with open(path, encoding="utf-8") as f:
            fc = json.load(f)
        out = {str(feat["properties"]["name"]): feat for feat in fc["features"]}
        for feat in out.values():
            shape(feat["geometry"])  # every geometry readable now, not at first use
    except OSError as e:
        raise BadInputError(f"cannot read the region names file {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:  # JSONDecodeError is a ValueError
        raise BadInputError(f"the region names file {path} is damaged ({type(e).__name__}: "
                            f"{first_line(e, 120)})") from None
    return out


def regions_file() -> Path:
    """The GeoJSON holding the named regions."""
    return catalogs_dir() / "regions.geojson"


def named_regions() -> dict[str, dict]:
    """All named regions as GeoJSON features keyed by name (``france`` is the outline, not a region)."""
    return _load_regions(str(regions_file()))


def france_outline() -> BaseGeometry:
    """Coarse outline of metropolitan France (+10 km) in Lambert-93."""
    feat = named_regions()["france"]
    return reproject_geometry(shape(feat["geometry"]), WGS84, L93)


def _parse_bbox(text: str) -> BaseGeometry | None:
    parts = text.split(",")
    if len(parts) != 4:
        return None
    try:
        minx, miny, maxx, maxy = (float(p) for p in parts)
    except ValueError:
        raise BadInputError(f"malformed bbox '{text}': expected four numbers minx,miny,maxx,maxy (WGS84)") from None
    if not all(map(lambda v: v == v and abs(v) != float("inf"), (minx, miny, maxx, maxy))):
        raise BadInputError(f"malformed bbox '{text}': values must be finite")
    if not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90):
        raise BadInputError(f"bbox '{text}' is not in WGS84 degrees (lon in [-180, 180], lat in [-90, 90])")
    if minx >= maxx or miny >= maxy:
        raise BadInputError(f"inverted or empty bbox '{text}': need minx < maxx and miny < maxy")
    return box(minx, miny, maxx, maxy)


def _read_region_file(path: Path) -> BaseGeometry:
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path)
    except Exception as e:  # pyogrio raises several types for unreadable files
        raise BadInputError(f"cannot read region file {path}: {first_line(e)}") from None
    if gdf.empty:
        raise BadInputError(f"region file {path} has no features")
    if gdf.crs is None:
        gdf = gdf.set_crs(WGS84)
    geom = shapely.union_all(gdf.to_crs(L93).geometry.values)
    if geom.is_empty or geom.area == 0:
        raise BadInputError(f"region file {path} has no polygon area")
    return shapely.make_valid(geom)


def parse_region(text: str, check_france: bool = True) -> Region:
    """Turn a ``--region`` value into a Region.

    Args:
        text: a region name (``toulouse``, ``demo``), ``minx,miny,maxx,maxy`` in WGS84 degrees,
            or a path to a GeoJSON/GeoPackage file.
        check_france: refuse regions that do not intersect metropolitan France.

    Raises:
        BadInputError: unknown name (with close matches), malformed bbox, unreadable file,
            or a region outside France.
    """
    text = text.strip()
    regions = named_regions()
    key = text.lower()
    if key in regions and key != "france":
        geom = reproject_geometry(shape(regions[key]["geometry"]), WGS84, L93)
        region = Region(key, geom)
    elif (bbox := _parse_bbox(text)) is not None:
        region = Region(f"bbox_{'_'.join(f'{v:g}' for v in bbox.bounds)}", reproject_geometry(bbox, WGS84, L93, 500))
    elif Path(text).suffix.lower() in (".geojson", ".json", ".gpkg", ".shp", ".fgb") or Path(text).exists():
        p = Path(text)
        if not p.exists():
            raise BadInputError(f"region file not found: {p}")
        region = Region(check_region_name(p.stem.lower()), _read_region_file(p))
    else:
        names = [n for n in regions if n != "france"]
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run 'msc-france regions' for the list"
        raise BadInputError(f"unknown region '{text}'{hint}")
    if check_france and not region.geometry.intersects(france_outline()):
        raise BadInputError(f"region '{text}' lies outside metropolitan France")
    return region
