"""IGN BD ORTHO deliveries (JPEG 2000 or GeoTIFF tiles, RVB and IRC, Lambert-93).

Pairing: a file's product is RVB/RGB or IRC, read from a token of its name in any case or
position (``...-IRC-E080``, ``NAME_rgb``, ``RVB_NAME``), else from the nearest folder name that
carries one (``rgb/NAME.tif``, ``..._IRC-0M20_JP2-E080_.../NAME.jp2``), else from its band count
(IGN names RVB tiles without a token; a 4-band file is R, G, B, NIR). Files of the same tile
share their name once the token is removed; they become the ``rgb`` and ``irc`` assets of one
item. Every file is used or reported as skipped, with the reason.

Fill: IGN fills what was not acquired with white, 255 in every band. Files that declare no
nodata get ``nodata: 255`` in their ``raster:bands``; the builder's rule (builder/warp.py) makes a
pixel fill only when all its bands equal it, so a pixel saturated in one band stays data.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from pathlib import Path

import pystac

from msc_france.ingest.common import (
    IngestReport,
    RasterMeta,
    add_asset,
    new_item,
    readable,
)

#: IGN's fill value (white) in every band of a BD ORTHO tile.
IGN_FILL = 255

_TOKEN = re.compile(r"(?<![A-Za-z0-9])(RVB|RGB|IRC)(?![A-Za-z0-9])", re.IGNORECASE)
_YEAR = re.compile(r"(?:^|[-_])((?:19|20)\d\d)(?:[-_])")
_DT_TAG = re.compile(r"^(\d{4})[:\-](\d{2})[:\-](\d{2})")
BANDS = {
    "rgb": [("red", "red"), ("green", "green"), ("blue", "blue")],
    "irc": [("nir", "nir"), ("red", "red"), ("green", "green")],
    "image": [("red", "red"), ("green", "green"), ("blue", "blue"), ("nir", "nir")],
}


def _product_of(path: Path, root: Path) -> tuple[str, str | None]:
    """(tile key, 'rgb' | 'irc' | None) from the file name, else its folders up to and including
    ``root`` itself (``catalog ingest DELIVERY/irc`` ingests IRC tiles, never RVB ones).
    """
    m = _TOKEN.search(path.stem)
    if m:
        key = (path.stem[: m.start()] + "-" + path.stem[m.end():]).strip("-_. ")
        key = re.sub(r"([-_.])[-_.]+", r"\1", key)
        return key, "irc" if m[1].upper() == "IRC" else "rgb"
    folders = [root / rel for rel in path.relative_to(root).parents if rel.name] + [root]
    for folder in folders:
        fm = _TOKEN.search(folder.name)
        if fm:
            return path.stem, "irc" if fm[1].upper() == "IRC" else "rgb"
    return path.stem, None


#: What a BD ORTHO tile can be: Lambert-93, sub-metre pixels, 3 (RVB or IRC) or 4 (RGBN) bands.
MAX_GSD_M = 1.0


def not_a_tile(meta: RasterMeta) -> str | None:
    """Why ``meta`` cannot be a BD ORTHO tile (None: it can), naming what it looks like instead."""
    res = meta.res_m
    looks = (f"; {meta.count} band(s) at {res:.3g} m look like a SPOT-6/7 ortho: pass --layout spot"
             if meta.count in (1, 4) and MAX_GSD_M <= res <= 8 else "")
    if meta.crs_code != "EPSG:2154":
        return (f"CRS {meta.crs_code or 'not identified as an EPSG CRS'} is not Lambert-93 (EPSG:2154): "
                f"not a BD ORTHO tile{looks}")
    if res >= MAX_GSD_M:
        return f"{res:.3g} m pixels: BD ORTHO tiles are sub-metre{looks}"
    if meta.count not in (3, 4):
        return f"{meta.count} band(s): not an RVB, IRC or 4-band tile"
    return None


def file_date(path: Path, tags: dict[str, str]) -> tuple[dt.datetime, str] | None:
    """Acquisition date from a TIFF date tag, else the campaign year of a BD ORTHO name."""
    for key in ("TIFFTAG_DATETIME", "ACQUISITION_DATE", "DATE"):
        m = _DT_TAG.match(tags.get(key, ""))
        if m:
            return dt.datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=dt.UTC), key
    m = _YEAR.search(path.stem)
    if m:  # BD ORTHO names carry the campaign year only
        return dt.datetime(int(m[1]), 7, 1, tzinfo=dt.UTC), "filename-year"
    return None


def _same_grid(a: RasterMeta, b: RasterMeta) -> bool:
    return (a.height, a.width) == (b.height, b.width) and all(
        abs(x - y) <= 1e-6 * max(1.0, abs(x)) for x, y in zip(a.transform, b.transform, strict=True)
    ) and (a.crs_code or a.crs_wkt) == (b.crs_code or b.crs_wkt)


def ingest_bdortho(files: list[Path], root: Path, collection: str, forced: dt.datetime | None,
                   report: IngestReport) -> list[pystac.Item]:
    """Items for the tiles among ``files``; unusable files go to ``report.skipped``."""
    tiles: dict[str, dict[str, RasterMeta]] = defaultdict(dict)
    for meta in readable(files, report):
        f = meta.path
        problem = not_a_tile(meta)
        if problem:
            report.skipped.append((f, problem))
            continue
        key, product = _product_of(f, root)
        if product is None:
            product = "image" if meta.count == 4 else "rgb"  # IGN's RVB tiles carry no product token
        elif meta.count != 3:
            report.skipped.append((f, f"{meta.count} bands in an {product.upper()} file: RVB and IRC tiles have 3"))
            continue
        if product in tiles[key]:
            report.skipped.append((f, f"same tile and product as {tiles[key][product].path}"))
            continue
        tiles[key][product] = meta
    items = []
    for key, products in sorted(tiles.items()):
        if "rgb" not in products and "image" not in products:
            for meta in products.values():
                report.skipped.append((meta.path, "IRC tile without its RVB partner"))
            continue
        main = products.get("rgb") or products["image"]
        found = (forced, "cli") if forced else file_date(main.path, main.tags)
        if found is None:
            for meta in products.values():
                report.skipped.append((meta.path, "no acquisition date in the file or its name (pass --datetime)"))
            continue
        item = new_item(key, main, found[0], {"msc_france:datetime_source": found[1]}, collection)
        for product, meta in sorted(products.items()):
            if product == "irc" and not _same_grid(meta, main):
                report.skipped.append((meta.path, f"IRC grid differs from its RVB tile {main.path.name}"))
                continue
            label = {"rgb": "RVB", "irc": "IRC", "image": "RGBN"}[product]
            add_asset(item, product, meta, BANDS[product][: meta.count], ["data"], f"{label} {meta.path.name}",
                      nodata=IGN_FILL)
            report.files_used += 1
        items.append(item)
    return items
