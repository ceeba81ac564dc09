"""The chip index as a table for people (``msc-france index``) and as files for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from msc_france.errors import BadInputError
from msc_france.fsutil import atomic_path
from msc_france.store.chip_index import ChipIndex

if TYPE_CHECKING:
    import geopandas as gpd

#: Output formats by file extension.
FORMATS = {".parquet": "GeoParquet", ".csv": "CSV", ".geojson": "GeoJSON"}


def summary_rows(idx: gpd.GeoDataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows for printing: chip, split, region, then per group its status and date."""
    ci = ChipIndex(idx)
    groups = ci.groups
    header = ["chip_id", "split", "region", *groups]
    status = {g: ci.status(g).tolist() for g in groups}
    when = {g: ci.datetime(g).tolist() if ci.has("datetime", g) else [None] * len(idx) for g in groups}
    rows = []
    for i, (cid, split, region) in enumerate(zip(idx["chip_id"], idx["split"], idx["region"], strict=True)):
        cells = [str(cid), str(split), str(region)]
        for g in groups:
            t = when[g][i]
            day = "" if t is None or pd.isna(t) else f" {t:%Y-%m-%d}"
            cells.append(f"{status[g][i]}{day}")
        rows.append(cells)
    return header, rows


def export_index(idx: gpd.GeoDataFrame, out: Path) -> int:
    """Write ``idx`` to ``out`` in the format its extension names; returns the number of rows.

    Raises:
        BadInputError: the extension is not one of :data:`FORMATS`, or ``out`` is a directory.
    """
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise BadInputError(f"cannot write the index as '{out.suffix or out.name}': use one of "
                            f"{', '.join(FORMATS)}")
    if out.is_dir():
        raise BadInputError(f"index output {out} is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    table = idx.copy()
    ci = ChipIndex(table)
    list_cols = ci.columns_of("item_ids")
    with atomic_path(out) as tmp:
        if suffix == ".parquet":
            table.to_parquet(tmp, write_covering_bbox=True)
        elif suffix == ".csv":
            for c in list_cols:  # CSV has no lists: item ids joined by spaces (ids have none)
                table[c] = table[c].apply(" ".join)
            wkt = table.geometry.to_wkt()
            pd.DataFrame(table.drop(columns="geometry")).assign(geometry=wkt).to_csv(tmp, index=False)
        else:  # RFC 7946: GeoJSON is WGS84
            for c in list_cols:
                table[c] = table[c].apply(list)
            for c in ci.columns_of("datetime"):
                table[c] = table[c].apply(lambda t: None if pd.isna(t) else t.isoformat())
            table.to_crs(4326).to_file(tmp, driver="GeoJSON")
    return len(idx)
