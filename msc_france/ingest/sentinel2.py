"""Sentinel-2 L2A products downloaded by users: ESA SAFE folders and Theia/MAJA folders.

ESA SAFE (``S2A_MSIL2A_..._N0400_..._T29UNU_....SAFE``): bands ``B02 B03 B04 B08`` from
``GRANULE/*/IMG_DATA/R10m`` and ``SCL`` from ``R20m`` (uint16 JPEG 2000, nodata 0). The processing
baseline, date, platform and cloud cover are read from ``MTD_MSIL2A.xml``; the baseline also from
the product id. Items look like Planetary Computer's ``sentinel-2-l2a`` items, so the stock
Sentinel-2 sensor (product ``sentinel-2-l2a``) reads them.

Theia/MAJA (``SENTINEL2B_20181023-105107-455_L2A_T30TYP_D_V1-9``): bands ``B2 B3 B4 B8`` from the
``FRE`` (default) or ``SRE`` GeoTIFFs (int16, reflectance x 10000, nodata -10000), masks
``CLM``, ``EDG`` and ``SAT`` of the 10 m group (``_R1``) from ``MASKS/``; read by product
``theia-l2a``. A product whose bands or masks are missing is skipped with the reason.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pystac

from msc_france.errors import BadInputError
from msc_france.ingest.common import IngestReport, add_asset, new_item, read_meta

SAFE_BANDS = {"B02": ("blue", "R10m"), "B03": ("green", "R10m"), "B04": ("red", "R10m"), "B08": ("nir", "R10m")}
THEIA_BANDS = {"B2": "blue", "B3": "green", "B4": "red", "B8": "nir"}
THEIA_MASKS = ("CLM", "EDG", "SAT")
_THEIA_DIR = re.compile(r"^SENTINEL2([AB])_(\d{8})-(\d{6})-(\d{3})_L2A_T(\w{5})_")
#: A Theia band file's name: the product id, then the variant and band (``..._V1-9_FRE_B2.tif``).
_THEIA_FILE = re.compile(r"^(SENTINEL2[AB]_\d{8}-\d{6}-\d{3}_L2A_T\w{5}_.+?)_(?:FRE|SRE)_B\w+\.tif$")


def _xml_text(path: Path, tag: str) -> str | None:
    """Text of the first element named ``tag`` (namespace ignored), or None."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == tag and el.text:
            return el.text.strip()
    return None


def _used(report: IngestReport, files: set[Path], used: set[Path], products: list[Path], reason: str,
          outside: str) -> None:
    """Sort the files not used: inside a registered product folder they are the product's other files
    (listed as not used); inside a product that was not registered they share its reason; outside
    every product folder they are skipped (``outside`` says why).
    """
    refused = {d: why for d, why in report.skipped if d in products}
    for f in sorted(files - used):
        home = next((d for d in products if d in f.parents), None)
        if home is None:
            report.skipped.append((f, outside))
        elif home in refused:
            report.skipped.append((f, f"its product {home.name} was not registered: {refused[home]}"))
        else:
            report.not_used.append((f, reason))


def ingest_safe(files: list[Path], root: Path, collection: str, report: IngestReport) -> list[pystac.Item]:
    """One item per ``*.SAFE`` folder under ``root``."""
    items, used = [], set()
    safes = sorted({p for p in [root, *root.rglob("*.SAFE")] if p.is_dir() and p.name.endswith(".SAFE")})
    for safe in safes:
        mtd = safe / "MTD_MSIL2A.xml"
        pid = safe.name[: -len(".SAFE")]
        if not mtd.exists():
            report.skipped.append((safe, "no MTD_MSIL2A.xml: not a Sentinel-2 L2A SAFE product"))
            continue
        start = _xml_text(mtd, "PRODUCT_START_TIME")
        if start is None:
            report.skipped.append((mtd, "MTD_MSIL2A.xml has no PRODUCT_START_TIME"))
            continue
        try:
            when = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
        except ValueError:
            report.skipped.append((mtd, f"MTD_MSIL2A.xml has an unreadable PRODUCT_START_TIME {start[:40]!r}"))
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        baseline = _xml_text(mtd, "PROCESSING_BASELINE")
        cloud = _xml_text(mtd, "Cloud_Coverage_Assessment")
        spacecraft = (_xml_text(mtd, "SPACECRAFT_NAME") or "").lower()
        paths = {}
        for key, (_, res) in SAFE_BANDS.items():
            hits = sorted(safe.glob(f"GRANULE/*/IMG_DATA/{res}/*_{key}_{res[1:]}.jp2"))
            if hits:
                paths[key] = hits[0]
        scl = sorted(safe.glob("GRANULE/*/IMG_DATA/R20m/*_SCL_20m.jp2"))
        missing = [k for k in SAFE_BANDS if k not in paths] + ([] if scl else ["SCL"])
        if missing:
            report.skipped.append((safe, f"SAFE product lacks {', '.join(missing)}"))
            continue
        paths["SCL"] = scl[0]
        try:  # one unreadable band skips its product, not the whole ingest
            metas = {k: read_meta(p) for k, p in paths.items()}
        except BadInputError as e:
            report.skipped.append((safe, f"SAFE product not registered: {e}"))
            continue
        props: dict[str, Any] = {"platform": spacecraft or "sentinel-2", "s2:product_uri": safe.name,
                 "msc_france:datetime_source": "MTD_MSIL2A.xml"}
        if baseline:
            props["s2:processing_baseline"] = baseline
        if cloud is not None:
            props["eo:cloud_cover"] = float(cloud)
        item = new_item(pid, metas["B02"], when, props, collection)
        for key, (common, _) in SAFE_BANDS.items():
            add_asset(item, key, metas[key], [(key, common)], ["data", "reflectance"], f"{key} {paths[key].name}", nodata=0)
        add_asset(item, "SCL", metas["SCL"], [("SCL", None)], ["data"], "scene classification", nodata=0)
        used |= set(paths.values())
        report.files_used += len(paths)
        items.append(item)
    _used(report, set(files), used, safes, "a file of the product this ingester does not read (it reads B02 B03 B04 "
          "B08 at 10 m and SCL at 20 m)", "not inside a Sentinel-2 L2A .SAFE folder")
    return items


def _theia_files(d: Path, pid: str, variant: str) -> dict[str, Path]:
    """The band files (``variant``) and 10 m masks of the Theia product ``pid`` in folder ``d``:
    named after the product, else any file of the right kind there.
    """
    paths = {}
    for key in THEIA_BANDS:
        hits = sorted(d.glob(f"{pid}_{variant}_{key}.tif")) or sorted(d.glob(f"*_{variant}_{key}.tif"))
        if hits:
            paths[key] = hits[0]
    for key in THEIA_MASKS:
        hits = sorted(d.glob(f"MASKS/{pid}_{key}_R1.tif")) or sorted(d.glob(f"MASKS/*_{key}_R1.tif"))
        if hits:
            paths[key] = hits[0]
    return paths


def ingest_theia(files: list[Path], root: Path, collection: str, variant: str, report: IngestReport) -> list[pystac.Item]:
    """One item per Theia/MAJA L2A folder under ``root`` (``variant`` FRE or SRE)."""
    items, used = [], set()
    # A product is a folder named after it (as Theia delivers it), or, where a user renamed or
    # flattened it, the band files that carry its id in their names and the MASKS/ beside them.
    products: dict[Path, str] = {p: p.name for p in [root, *root.rglob("SENTINEL2*_L2A_*")]
                                 if p.is_dir() and _THEIA_DIR.match(p.name)}
    for f in files:
        fm = _THEIA_FILE.match(f.name)
        if fm and not any(d in f.parents for d in products):
            products.setdefault(f.parent, fm[1])
    folders = sorted(products)
    for d in folders:
        pid = products[d]
        m = _THEIA_DIR.match(pid)
        assert m is not None
        try:
            # Fixed-width fields: strptime would accept "20211340" as 2021-01-03 plus leftover digits.
            ymd, hms = m[2], m[3]
            when = dt.datetime(int(ymd[:4]), int(ymd[4:6]), int(ymd[6:]), int(hms[:2]), int(hms[2:4]), int(hms[4:]),
                               int(m[4]) * 1000, tzinfo=dt.UTC)
        except ValueError:
            report.skipped.append((d, f"impossible acquisition date and time {m[2]}-{m[3]} in the product name"))
            continue
        paths = _theia_files(d, pid, variant)
        missing = [k for k in (*THEIA_BANDS, *THEIA_MASKS) if k not in paths]
        if missing:
            names = [f"{k}_R1" if k in THEIA_MASKS else f"{variant}_{k}" for k in missing]
            report.skipped.append((d, f"Theia product lacks {', '.join(names)}"))
            continue
        try:
            metas = {k: read_meta(p) for k, p in paths.items()}
        except BadInputError as e:
            report.skipped.append((d, str(e)))
            continue
        mtd = next(iter(sorted(d.glob(f"{pid}_MTD_ALL.xml")) or sorted(d.glob("*_MTD_ALL.xml"))), None)
        cloud = _xml_text(mtd, "CloudPercent") if mtd else None
        props = {"platform": f"sentinel-2{m[1].lower()}", "s2:mgrs_tile": m[5], "msc_france:theia_variant": variant,
                 "msc_france:datetime_source": "product name" if pid == d.name else "file names"}
        if cloud is not None:
            props["eo:cloud_cover"] = float(cloud)
        item = new_item(pid, metas["B2"], when, props, collection)
        for key, common in THEIA_BANDS.items():
            add_asset(item, key, metas[key], [(key, common)], ["data", "reflectance"], f"{variant} {key}",
                      nodata=-10000, scale=1e-4, offset=0.0)
        for key in THEIA_MASKS:
            add_asset(item, key, metas[key], [(key, None)], ["data"], f"MAJA {key} mask (10 m group)")
        used |= set(paths.values())
        report.files_used += len(paths)
        items.append(item)
    _used(report, set(files), used, folders, f"a file of the product this ingester does not read (it reads the "
          f"{variant} B2 B3 B4 B8 bands and the CLM EDG SAT masks of the 10 m group)",
          "not inside a Theia product folder named after its product (SENTINEL2X_YYYYMMDD-HHMMSS-mmm_L2A_T<tile>_...)")
    return items
