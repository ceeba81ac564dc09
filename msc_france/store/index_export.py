"""The chip index as a table for people (``msc-france index``) and as files for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from msc_france.errors import BadInputError
from msc_france.fsutil import atomic_path

if TYPE_CHECKING:
    import geopandas as gpd

#: Output formats by file extension.
FORMATS = {".parquet": "GeoParquet", ".csv": "CSV", ".geojson": "GeoJSON"}


def summary_rows(idx: gpd.GeoDataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows for printing: chip, split, region, then per group its status and date."""
    groups = [c.removeprefix("status_") for c in idx.columns if c.startswith("status_")]
    header = ["chip_id", "split", "region", *groups]
    rows = []
    for _, r in idx.iterrows():
        cells = [str(r["chip_id"]), str(r["split"]), str(r["region"])]
        for g in groups:
            when = r.get(f"datetime_{g}")
            day = "" if when is None or str(when) == "NaT" else f" {when:%Y-%m-%d}"
            cells.append(f"{r[f'status_{g}']}{day}")
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
    list_cols = [c for c in table.columns if c.startswith("item_ids_")]
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
            for c in table.columns:
                if c.startswith("datetime_"):
                    table[c] = table[c].apply(lambda t: None if str(t) == "NaT" else t.isoformat())
            table.to_crs(4326).to_file(tmp, driver="GeoJSON")
    return len(idx)
