"""SPOT-6/7 orthos: PAN (1.5 m, 1 band), MS (6 m, 4 bands) and pansharpened (1.5 m, 4 bands).

The three are distinct products of one acquisition: each item records its product in
``msc_france:product`` (``spot-pan``, ``spot-ms``, ``spot-pms``), the plan never mosaics items of
different products, and a sensor YAML selects one with a property filter. The product comes from
a name token (``PAN``/``_P_``, ``MS``, ``PMS``/``PXS``), else from the band count and pixel size.
Band order is read from the file's band descriptions (or given with ``--band-order``), never
assumed: a 4-band file that names no bands is skipped with the reason.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pystac

from msc_france.ingest.common import IngestReport, add_asset, new_item, readable

_PRODUCT = [("spot-pms", re.compile(r"(?<![A-Za-z0-9])(PMS|PXS|PANSHARP\w*)(?![A-Za-z0-9])", re.I)),
            ("spot-pan", re.compile(r"(?<![A-Za-z0-9])(PAN|P)(?![A-Za-z0-9])", re.I)),
            ("spot-ms", re.compile(r"(?<![A-Za-z0-9])(MS)(?![A-Za-z0-9])", re.I))]
_DATE = re.compile(r"((?:19|20)\d\d)(\d\d)(\d\d)")
_PLATFORM = re.compile(r"SPOT[-_ ]?([67])", re.I)
COMMON = {"blue": "blue", "b": "blue", "green": "green", "g": "green", "red": "red", "r": "red",
          "nir": "nir", "n": "nir", "pan": "pan", "p": "pan"}


def _band_names(descriptions: tuple[str | None, ...], order: list[str] | None) -> list[str] | None:
    if order:
        return order
    names = [COMMON.get((d or "").strip().lower()) for d in descriptions]
    return names if all(names) else None  # type: ignore[return-value]


def ingest_spot(files: list[Path], collection: str, forced: dt.datetime | None, band_order: list[str] | None,
                report: IngestReport) -> list[pystac.Item]:
    """One item per file, its product recorded; unusable files go to ``report.skipped``."""
    items = []
    for meta in readable(files, report):
        f = meta.path
        product = next((p for p, rx in _PRODUCT if rx.search(f.stem)), None)
        if product is None:
            product = "spot-pan" if meta.count == 1 else ("spot-ms" if meta.res_m >= 4 else "spot-pms")
        if product == "spot-pan":
            names = ["pan"] if meta.count == 1 else None
        else:
            names = _band_names(meta.descriptions, band_order)
        if names is None or len(names) != meta.count:
            report.skipped.append((f, f"{meta.count} band(s) with no band names: pass --band-order, e.g. "
                                      "red,green,blue,nir (the order of SPOT-6/7 GEOSUD deliveries)"))
            continue
        m = _DATE.search(f.stem)
        when = forced or (dt.datetime(int(m[1]), int(m[2]), int(m[3]), 12, tzinfo=dt.UTC) if m else None)
        if when is None:
            report.skipped.append((f, "no acquisition date in its name (pass --datetime)"))
            continue
        pm = _PLATFORM.search(f.stem)
        props = {"msc_france:product": product, "platform": f"spot-{pm[1]}" if pm else "spot",
                 "msc_france:datetime_source": "cli" if forced else "filename"}
        item = new_item(f.stem, meta, when, props, collection)
        add_asset(item, "image", meta, [(n, n) for n in names], ["data"],
                  f"{product} {f.name}")
        report.files_used += 1
        items.append(item)
    return items
