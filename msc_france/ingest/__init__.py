"""``msc-france catalog ingest``: files users downloaded -> a local static STAC catalog.

One ingester per file *layout* (BD ORTHO aerial tiles, SPOT-6/7 orthos, Sentinel-2 L2A SAFE,
Theia/MAJA L2A), chosen with ``--layout`` or detected from the files. A layout is how files lie on
disk; the items it makes are read by a *product* (:mod:`msc_france.products`): :data:`LAYOUTS` is
the one table between the two vocabularies. Every raster file under the directory ends up in an
item or in the report's skipped list, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msc_france.config.base import check_name
from msc_france.errors import BadInputError
from msc_france.ingest.bdortho import ingest_bdortho
from msc_france.ingest.common import (
    IngestReport,
    check_catalog_out,
    parse_when,
    raster_files,
    write_catalog,
)
from msc_france.ingest.sentinel2 import ingest_safe, ingest_theia
from msc_france.ingest.spot import ingest_spot


@dataclass(frozen=True)
class Layout:
    """A file layout: the product that reads the items it makes, and its default collection."""

    name: str
    product: str  # the ``product`` of the sensor YAML that reads these items (msc_france.products)
    collection: str
    ingest: Callable[..., list[Any]]


def _theia(files: list[Path], directory: Path, coll: str, forced: Any, band_order: Any, variant: str,
           report: IngestReport) -> list[Any]:
    return ingest_theia(files, directory, coll, variant, report)


#: Layout name -> how it is ingested and which product reads it.
LAYOUTS: dict[str, Layout] = {L.name: L for L in (
    Layout("bd-ortho", "raster", "aerial",
           lambda files, d, coll, forced, order, variant, report: ingest_bdortho(files, d, coll, forced, report)),
    Layout("spot", "raster", "spot",
           lambda files, d, coll, forced, order, variant, report: ingest_spot(files, coll, forced, order, report)),
    Layout("s2-safe", "sentinel-2-l2a", "sentinel-2-l2a",
           lambda files, d, coll, forced, order, variant, report: ingest_safe(files, d, coll, report)),
    Layout("theia", "theia-l2a", "sentinel-2-theia", _theia),
)}
PRODUCTS = tuple(LAYOUTS)  # the layout names, as ``--product`` named them before layouts


#: A Sentinel-2 SAFE's image files: T<tile>_<date>T<time>_<band>_<res>m.jp2 (B02, B8A, SCL, TCI, AOT, WVP).
_SAFE_NAME = re.compile(r"^T\d\d[A-Z]{3}_\d{8}T\d{6}_[A-Z0-9]{3}_\d\dm\.jp2$")


def detect_product(directory: Path, files: list[Path]) -> tuple[str, str]:
    """The product family the files make clear, and the rule that decided it.

    Raises:
        BadInputError: the files mix families.
    """
    found: dict[str, str] = {}
    if "MSIL1C" in directory.name.upper() or any(True for _ in directory.rglob("MTD_MSIL1C.xml")):
        raise BadInputError(f"{directory} is a Sentinel-2 Level-1C product (top of atmosphere): not supported; "
                            "msc-france reads Level-2A (--layout s2-safe or theia)")
    if directory.name.endswith(".SAFE"):
        found["s2-safe"] = "the folder is a .SAFE"
    elif any(True for _ in directory.rglob("MTD_MSIL2A.xml")):
        found["s2-safe"] = "an MTD_MSIL2A.xml"
    elif any(_SAFE_NAME.match(f.name) for f in files):
        found["s2-safe"] = "Sentinel-2 SAFE file names (T<tile>_<date>_<band>_<res>m.jp2)"
    if any(("_FRE_B" in f.name or "_SRE_B" in f.name) for f in files):
        found["theia"] = "Theia _FRE_/_SRE_ band files"
    if any("SPOT" in f.name.upper() for f in files):
        found["spot"] = "SPOT in a file name"
    if len(found) > 1:
        raise BadInputError(f"{directory} mixes products ({', '.join(sorted(found))}): pass --layout")
    if found:
        kind, why = found.popitem()
        return kind, f"detected from {why}"
    return "bd-ortho", "no SAFE, Theia or SPOT marker: read as BD ORTHO tiles"


def ingest(directory: Path, out: Path, product: str = "auto", collection: str | None = None,
           when: str | None = None, variant: str = "FRE", band_order: list[str] | None = None) -> IngestReport:
    """Scan ``directory`` and write ``out/catalog.json``.

    Args:
        directory: folder searched recursively.
        out: output folder for the catalog (created).
        product: ``auto`` or one of bd-ortho, spot, s2-safe, theia.
        collection: collection id of the items (default per product).
        when: acquisition date (YYYY-MM-DD) overriding file metadata (BD ORTHO, SPOT).
        variant: Theia reflectance, ``FRE`` (flat, slope-corrected) or ``SRE``.
        band_order: SPOT band names in file order, when the files do not name their bands.

    Returns:
        The report: items written, files used, files skipped with their reasons.

    Raises:
        BadInputError: missing directory, no raster file, mixed products, nothing usable.
    """
    directory = directory.expanduser()
    if not directory.is_dir():
        raise BadInputError(f"not a directory: {directory}")
    if product not in ("auto", *LAYOUTS):
        raise BadInputError(f"unknown layout '{product}' (known: auto, {', '.join(LAYOUTS)})")
    if variant not in ("FRE", "SRE"):
        raise BadInputError(f"unknown Theia variant '{variant}' (FRE or SRE)")
    if collection is not None:
        try:
            check_name(collection, "collection id")
        except ValueError as e:
            raise BadInputError(str(e)) from None
    check_catalog_out(out.expanduser())
    forced = parse_when(when)
    report = IngestReport()
    files = raster_files(directory, report.skipped)
    if not files:
        raise BadInputError(f"no .jp2/.tif/.tiff files under {directory}")
    kind, why = detect_product(directory, files) if product == "auto" else (product, "--layout")
    layout = LAYOUTS[kind]
    coll = collection or layout.collection
    report.product, report.decided_by = kind, why
    items = layout.ingest(files, directory, coll, forced, band_order, variant, report)
    if not items:
        first = f": {report.skipped[0][0].name}: {report.skipped[0][1]}" if report.skipped else ""
        raise BadInputError(f"no {kind} item could be made from {directory} ({why}){first}")
    report.catalog = write_catalog(items, out.expanduser(), coll, f"{kind} files ingested from {directory}")
    report.items = len(items)
    return report


__all__ = ["LAYOUTS", "PRODUCTS", "IngestReport", "Layout", "detect_product", "ingest"]
