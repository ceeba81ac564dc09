"""``msc-france catalog ingest``: a directory of aerial tiles -> a local static STAC catalog.

Made for IGN BD ORTHO deliveries: JPEG 2000 or GeoTIFF tiles ("dalles") in Lambert-93, one RVB
(red, green, blue) and optionally one IRC (near-infrared, red, green) file per tile, named like
``31-2021-0560-6280-LA93-0M20-...``. RVB and IRC files of the same tile become the ``rgb`` and
``irc`` assets of one item; a 4-band file becomes an ``image`` asset (R, G, B, NIR).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from pathlib import Path

import pystac
import rasterio
from pyproj import CRS
from shapely.geometry import box, mapping

from msc_france.crs import L93, WGS84, reproject_geometry
from msc_france.errors import BadInputError

SUFFIXES = {".jp2", ".tif", ".tiff"}
_YEAR = re.compile(r"(?:^|[-_])((?:19|20)\d\d)(?:[-_])")
_PRODUCT = re.compile(r"(?:^|[-_])(RVB|IRC)(?:[-_.]|$)", re.IGNORECASE)
_DT_TAG = re.compile(r"^(\d{4})[:\-](\d{2})[:\-](\d{2})")

BANDS = {
    "rgb": [("red", "red"), ("green", "green"), ("blue", "blue")],
    "irc": [("nir", "nir"), ("red", "red"), ("green", "green")],
    "image": [("red", "red"), ("green", "green"), ("blue", "blue"), ("nir", "nir")],
}


def _epsg_of(crs: rasterio.crs.CRS) -> int | None:
    # Some BD ORTHO files carry a Lambert-93 WKT without authority code: compare by equivalence.
    c = CRS.from_wkt(crs.to_wkt())
    if c.equals(CRS.from_user_input(L93), ignore_axis_order=True):
        return 2154
    return c.to_epsg(min_confidence=70)


def _file_date(path: Path, tags: dict[str, str]) -> tuple[dt.datetime, str] | None:
    for key in ("TIFFTAG_DATETIME", "ACQUISITION_DATE", "DATE"):
        m = _DT_TAG.match(tags.get(key, ""))
        if m:
            return dt.datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=dt.UTC), key
    m = _YEAR.search(path.stem)
    if m:  # BD ORTHO names carry the campaign year only
        return dt.datetime(int(m[1]), 7, 1, tzinfo=dt.UTC), "filename-year"
    return None


def _tile_key(path: Path) -> tuple[str, str]:
    m = _PRODUCT.search(path.stem)
    product = m[1].upper() if m else ""
    key = _PRODUCT.sub("-", path.stem) if m else path.stem
    return key.strip("-_"), product


def ingest_directory(directory: Path, out: Path, collection: str = "aerial", when: str | None = None) -> int:
    """Scan ``directory`` for tiles and write ``out/catalog.json`` (a self-contained catalog).

    Args:
        directory: folder searched recursively for .jp2/.tif/.tiff files.
        out: output folder for the catalog (created).
        collection: collection id of the items.
        when: acquisition date (YYYY-MM-DD) overriding file metadata.

    Returns:
        The number of items written.

    Raises:
        BadInputError: missing/empty directory, unreadable file, unknown CRS, or a file without
            an acquisition date when ``when`` is not given.
    """
    if not directory.is_dir():
        raise BadInputError(f"not a directory: {directory}")
    forced = None
    if when is not None:
        try:
            forced = dt.datetime.combine(dt.date.fromisoformat(when), dt.time(12), dt.UTC)
        except ValueError:
            raise BadInputError(f"bad --datetime '{when}': expected YYYY-MM-DD") from None
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        raise BadInputError(f"no .jp2/.tif/.tiff tiles under {directory}")
    tiles: dict[str, dict[str, Path]] = defaultdict(dict)
    for f in files:
        key, product = _tile_key(f)
        tiles[key][product] = f
    cat = pystac.Catalog("msc-france-local", f"Tiles ingested from {directory}")
    coll = pystac.Collection(collection, f"Aerial tiles from {directory}", pystac.Extent(
        pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]])))
    cat.add_child(coll)
    bboxes, dates = [], []
    for key, products in sorted(tiles.items()):
        item = None
        for product, f in sorted(products.items()):
            try:
                with rasterio.open(f) as src:
                    crs, transform, h, w, count = src.crs, src.transform, src.height, src.width, src.count
                    dtype, nodata, tags = src.dtypes[0], src.nodata, src.tags()
            except rasterio.errors.RasterioIOError as e:
                raise BadInputError(f"cannot read {f}: {str(e).splitlines()[0]}") from None
            if crs is None:
                raise BadInputError(f"{f} has no CRS")
            epsg = _epsg_of(crs)
            if epsg is None:
                raise BadInputError(f"{f}: CRS has no EPSG equivalent")
            asset_key = {"RVB": "rgb", "IRC": "irc"}.get(product, "image" if count >= 4 else "rgb")
            if item is None:
                found = (forced, "cli") if forced else _file_date(f, tags)
                if found is None:
                    raise BadInputError(f"{f} carries no acquisition date; pass --datetime YYYY-MM-DD")
                acquired, date_source = found
                bounds = rasterio.transform.array_bounds(h, w, transform)
                geom = reproject_geometry(box(bounds[0], bounds[1], bounds[2], bounds[3]), f"EPSG:{epsg}", WGS84, 100)
                item = pystac.Item(key, mapping(geom), list(geom.bounds), acquired, {
                    "gsd": abs(transform.a), "proj:code": f"EPSG:{epsg}", "proj:epsg": epsg,
                    "proj:shape": [h, w], "proj:transform": list(transform)[:6], "proj:bbox": list(bounds),
                    "msc_france:datetime_source": date_source,
                }, collection=collection)
                bboxes.append(geom.bounds)
                dates.append(acquired)
            names = BANDS[asset_key][:count]
            item.add_asset(asset_key, pystac.Asset(
                str(f.resolve()), title=f"{product or 'tile'} {f.name}",
                media_type="image/jp2" if f.suffix.lower() == ".jp2" else pystac.MediaType.GEOTIFF,
                roles=["data"], extra_fields={
                    "eo:bands": [{"name": n, "common_name": c} for n, c in names],
                    "raster:bands": [{"data_type": dtype, "nodata": nodata} for _ in range(count)],
                    "proj:shape": [h, w], "proj:transform": list(transform)[:6],
                }))
        assert item is not None
        coll.add_item(item)
    minx = min(b[0] for b in bboxes)
    miny = min(b[1] for b in bboxes)
    maxx = max(b[2] for b in bboxes)
    maxy = max(b[3] for b in bboxes)
    coll.extent = pystac.Extent(pystac.SpatialExtent([[minx, miny, maxx, maxy]]),
                                pystac.TemporalExtent([[min(dates), max(dates)]]))
    out.mkdir(parents=True, exist_ok=True)
    cat.normalize_hrefs(str(out.resolve()))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return len(tiles)
