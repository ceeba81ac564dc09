"""What every ingester shares: reading a file's grid, naming its CRS, making and writing items.

Items follow STAC 1.x with the projection, raster and eo extensions declared in
``stac_extensions`` (validated by pystac in the tests). ``proj:code`` is written when the CRS
has an EPSG equivalent (by equivalence, as GDAL identifies it, not by name), ``proj:wkt2``
otherwise: the warper needs the file's CRS, never an EPSG code.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
import rasterio
import rasterio.errors
from shapely.geometry import box, mapping

from msc_france.crs import WGS84, identify_epsg, reproject_geometry
from msc_france.errors import BadInputError, first_line, printable

RASTER_SUFFIXES = {".jp2", ".tif", ".tiff"}
EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
]


@dataclass(frozen=True)
class RasterMeta:
    """What ingest reads from a raster file's header."""

    path: Path
    crs_code: str | None  # "EPSG:NNNN" when GDAL identifies one
    crs_wkt: str
    transform: tuple[float, ...]
    height: int
    width: int
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    tags: dict[str, str]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in the file's CRS."""
        a, _, c, _, e, f = self.transform
        return (c, f + e * self.height, c + a * self.width, f)

    @property
    def res(self) -> float:
        """Pixel size (x) in CRS units (degrees for a geographic CRS: see :attr:`res_m`)."""
        return abs(self.transform[0])

    @property
    def res_m(self) -> float:
        """Ground pixel size in metres whatever the CRS: for a geographic CRS the geodesic length of
        one pixel along each grid axis at the file's centre (their mean); for a projected one, the
        pixel size in its linear unit converted to metres.
        """
        import pyproj

        crs = pyproj.CRS.from_user_input(self.crs_input)
        a, b, c, d, e, f = self.transform
        if not crs.is_geographic:
            unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
            return float(abs(a) * unit)
        cx, cy = self.width / 2, self.height / 2
        lon, lat = c + a * cx + b * cy, f + d * cx + e * cy
        geod = crs.get_geod() or pyproj.Geod(ellps="WGS84")
        _, _, along_x = geod.inv(lon, lat, lon + a, lat + d)
        _, _, along_y = geod.inv(lon, lat, lon + b, lat + e)
        return float((abs(along_x) + abs(along_y)) / 2)

    @property
    def crs_input(self) -> str:
        """The CRS as pyproj/rasterio input: its EPSG code, else its WKT."""
        return self.crs_code or self.crs_wkt


@dataclass
class IngestReport:
    """What an ingest did: items written, and every input file it did not use, with the reason."""

    items: int = 0
    files_used: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: Files of a recognised product that this ingester does not read (other resolutions, masks,
    #: quicklooks): listed, but they do not make the delivery incomplete.
    not_used: list[tuple[Path, str]] = field(default_factory=list)
    catalog: Path | None = None
    product: str = ""  # the product family read, and what decided it (``--product`` or detection)
    decided_by: str = ""


def crs_code(crs: rasterio.crs.CRS) -> str | None:
    """'EPSG:NNNN' for a CRS equivalent to an EPSG CRS (IGN's authority-less Lambert-93 WKTs
    included, see :func:`msc_france.crs.identify_epsg`), else None.
    """
    epsg = identify_epsg(crs.to_wkt())
    return f"EPSG:{epsg}" if epsg else None


def read_meta(path: Path) -> RasterMeta:
    """Read a raster header. Raises BadInputError (unreadable file, no CRS)."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise BadInputError(f"{path} has no CRS")
            return RasterMeta(path, crs_code(src.crs), src.crs.to_wkt(), tuple(src.transform)[:6], src.height,
                              src.width, src.count, src.dtypes[0], src.nodata, tuple(src.descriptions),
                              dict(src.tags()))
    except rasterio.errors.RasterioIOError as e:
        raise BadInputError(f"cannot read {path}: {first_line(e)}") from None


def readable(files: list[Path], report: IngestReport) -> Iterator[RasterMeta]:
    """The headers of ``files``; an unreadable file goes to ``report.skipped`` with the reason."""
    for f in files:
        try:
            yield read_meta(f)
        except BadInputError as e:
            report.skipped.append((f, str(e)))


def raster_files(directory: Path, skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Every .jp2/.tif/.tiff file under ``directory`` (sorted), symlinked folders followed.

    A folder reached a second time through a link (a loop, or two links to one folder) is not
    walked again; it goes to ``skipped`` with the folder it repeats. A link to a folder that
    contains ``directory`` (``up -> ..``, ``all -> /``) is never walked: it goes to ``skipped``.
    """
    seen: dict[str, Path] = {}
    out = []
    root = os.path.realpath(directory)
    for top, dirs, names in os.walk(directory, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            if skipped is not None:
                skipped.append((Path(top), f"folder already read as {seen[real]} (a symlink loop or a second link)"))
            dirs[:] = []
            continue
        seen[real] = Path(top)
        escaping = [d for d in dirs if os.path.islink(os.path.join(top, d))
                    and _contains(os.path.realpath(os.path.join(top, d)), root)]
        for d in escaping:  # `up -> ..` or `all -> /`: walking it would catalog what lies beside or above
            dirs.remove(d)
            if skipped is not None:
                skipped.append((Path(top) / d, f"a link to {os.path.realpath(os.path.join(top, d))}, a folder that "
                                               "contains the ingested folder: not walked"))
        dirs.sort()
        for n in names:
            p = Path(top) / n
            if p.suffix.lower() in RASTER_SUFFIXES and p.is_file():
                try:
                    str(p).encode("utf-8")
                except UnicodeEncodeError:  # its bytes were not UTF-8: a STAC (JSON) href cannot hold it
                    if skipped is not None:
                        skipped.append((p, "file name is not valid UTF-8 (a STAC href must be); rename it"))
                    continue
                out.append(p)
    return sorted(out)


def _contains(folder: str, path: str) -> bool:
    """Whether ``folder`` is ``path`` or one of its ancestors (both resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def new_item(item_id: str, meta: RasterMeta, when: dt.datetime, props: dict[str, Any], collection: str) -> pystac.Item:
    """An item whose geometry is ``meta``'s footprint, with projection properties."""
    geom = reproject_geometry(box(*meta.bounds), meta.crs_input, WGS84, densify_m=100 * meta.res_m)
    proj: dict[str, Any] = {"proj:code": meta.crs_code} if meta.crs_code else {"proj:code": None, "proj:wkt2": meta.crs_wkt}
    item = pystac.Item(item_id, mapping(geom), list(geom.bounds), when, {
        "gsd": round(meta.res_m, 6), **proj, "proj:shape": [meta.height, meta.width],
        "proj:transform": list(meta.transform), "proj:bbox": list(meta.bounds), **props,
    }, collection=collection, stac_extensions=list(EXTENSIONS))
    return item


def add_asset(item: pystac.Item, key: str, meta: RasterMeta, bands: Sequence[tuple[str, str | None]],
              roles: list[str], title: str, nodata: float | None = None, scale: float | None = None,
              offset: float | None = None) -> None:
    """Add a file as an asset, with eo:bands (name, common name) and raster:bands."""
    media = "image/jp2" if meta.path.suffix.lower() == ".jp2" else pystac.MediaType.GEOTIFF
    nd = meta.nodata if meta.nodata is not None else nodata
    rb: dict[str, Any] = {"data_type": meta.dtype}
    if nd is not None:
        rb["nodata"] = nd
    if scale is not None:
        rb["scale"] = scale
    if offset is not None:
        rb["offset"] = offset
    eo = [{"name": n, **({"common_name": c} if c else {})} for n, c in bands]
    item.add_asset(key, pystac.Asset(str(meta.path.resolve()), title=title, media_type=media, roles=roles,
                                     extra_fields={"eo:bands": eo, "raster:bands": [dict(rb) for _ in range(meta.count)],
                                                   "proj:shape": [meta.height, meta.width],
                                                   "proj:transform": list(meta.transform)}))


#: Written next to every catalog ``catalog ingest`` creates: a later ingest may replace that folder's
#: catalog, and only that one.
CATALOG_MARKER = ".msc-france-catalog"
OUR_CATALOG_ID = "msc-france-local"


def check_catalog_out(out: Path) -> None:
    """Refuse an ``--out`` folder that holds anything but a catalog an earlier ingest wrote.

    Raises:
        BadInputError: naming what the folder holds.
    """
    from msc_france.fsutil import refuse_inside_store

    refuse_inside_store(out, "catalog ingest --out")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} is a file, not a folder")
    if not out.is_dir() or (out / CATALOG_MARKER).is_file():
        return
    found = sorted(p.name for p in out.iterdir())
    if not found:
        return
    if (out / "catalog.json").is_file():
        try:
            ours = json.loads((out / "catalog.json").read_text(encoding="utf-8")).get("id") == OUR_CATALOG_ID
        except (OSError, ValueError, AttributeError):
            ours = False
        if ours:  # written by an ingest before the marker existed
            return
    shown = ", ".join(printable(n) for n in found[:3]) + (", ..." if len(found) > 3 else "")
    raise BadInputError(f"--out {out} already holds files that catalog ingest did not write ({shown}); "
                        "choose an empty or new folder")


def write_catalog(items: list[pystac.Item], out: Path, collection: str, description: str) -> Path:
    """Write ``out/catalog.json``, a self-contained catalog holding one collection of ``items``
    (``out`` checked first with :func:`check_catalog_out`).
    """
    if not items:
        raise BadInputError(f"nothing to write: no item could be made ({description})")
    check_catalog_out(out)
    cat = pystac.Catalog(OUR_CATALOG_ID, description)
    bboxes = [it.bbox for it in items if it.bbox is not None]  # new_item always sets both
    dates = [it.datetime for it in items if it.datetime is not None]
    coll = pystac.Collection(collection, description, pystac.Extent(
        pystac.SpatialExtent([[min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                               max(b[2] for b in bboxes), max(b[3] for b in bboxes)]]),
        pystac.TemporalExtent([[min(dates), max(dates)]])))
    cat.add_child(coll)
    for it in items:
        coll.add_item(it)
    out.mkdir(parents=True, exist_ok=True)
    (out / CATALOG_MARKER).write_text("written by msc-france catalog ingest; a later ingest may replace it\n")
    cat.normalize_hrefs(str(out.resolve()))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return out / "catalog.json"


def parse_when(when: str | None) -> dt.datetime | None:
    """``--datetime YYYY-MM-DD`` -> noon UTC of that day (None: take dates from the files)."""
    if when is None:
        return None
    try:
        return dt.datetime.combine(dt.date.fromisoformat(when), dt.time(12), dt.UTC)
    except ValueError:
        raise BadInputError(f"bad --datetime '{when}': expected YYYY-MM-DD") from None
