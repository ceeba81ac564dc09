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


def _used(report: IngestReport, files: set[Path], used: set[Path], reason: str) -> None:
    for f in sorted(files - used):
        report.skipped.append((f, reason))


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
        when = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
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
        metas = {k: read_meta(p) for k, p in paths.items()}
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
    _used(report, set(files), used, "not a band or mask this ingester reads")
    return items


def ingest_theia(files: list[Path], root: Path, collection: str, variant: str, report: IngestReport) -> list[pystac.Item]:
    """One item per Theia/MAJA L2A folder under ``root`` (``variant`` FRE or SRE)."""
    items, used = [], set()
    folders = sorted({p for p in [root, *root.rglob("SENTINEL2*_L2A_*")] if p.is_dir() and _THEIA_DIR.match(p.name)})
    for d in folders:
        m = _THEIA_DIR.match(d.name)
        assert m is not None
        when = dt.datetime.strptime(f"{m[2]}{m[3]}{m[4]}", "%Y%m%d%H%M%S%f").replace(tzinfo=dt.UTC)
        paths = {}
        for key in THEIA_BANDS:
            hits = sorted(d.glob(f"*_{variant}_{key}.tif"))
            if hits:
                paths[key] = hits[0]
        for key in THEIA_MASKS:
            hits = sorted(d.glob(f"MASKS/*_{key}_R1.tif"))
            if hits:
                paths[key] = hits[0]
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
        mtd = next(iter(sorted(d.glob("*_MTD_ALL.xml"))), None)
        cloud = _xml_text(mtd, "CloudPercent") if mtd else None
        props = {"platform": f"sentinel-2{m[1].lower()}", "s2:mgrs_tile": m[5], "msc_france:theia_variant": variant,
                 "msc_france:datetime_source": "product name"}
        if cloud is not None:
            props["eo:cloud_cover"] = float(cloud)
        item = new_item(d.name, metas["B2"], when, props, collection)
        for key, common in THEIA_BANDS.items():
            add_asset(item, key, metas[key], [(key, common)], ["data", "reflectance"], f"{variant} {key}",
                      nodata=-10000, scale=1e-4, offset=0.0)
        for key in THEIA_MASKS:
            add_asset(item, key, metas[key], [(key, None)], ["data"], f"MAJA {key} mask (10 m group)")
        used |= set(paths.values())
        report.files_used += len(paths)
        items.append(item)
    _used(report, set(files), used, "not a band or mask of the chosen variant and 10 m group")
    return items
