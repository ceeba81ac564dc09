"""The chip index as a value: ``index.parquet`` read once, its per-group columns reached by group
name and field, never by rebuilding column names (``status_<group with _>`` and friends).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd

from msc_france.store.records import Status

#: Per-group fields of the index, in the order consolidation writes them.
FIELDS = ("status", "valid_fraction", "cloud_fraction", "scene_cloud_cover", "datetime", "item_ids", "shift_x_m",
          "shift_y_m", "coreg_quality", "days_from_reference", "provider", "date_rule")


#: Prefix of the labels' per-class columns: ``class_fraction_<code>``.
CLASS_FRACTION = "class_fraction_"


def column(group: str) -> str:
    """A group's name as it appears in index columns (``-`` -> ``_``: columns are identifiers)."""
    return group.replace("-", "_")


def field_column(field: str, group: str) -> str:
    """The index column of ``field`` for ``group`` (``status``, ``sentinel-2-l2a`` -> ``status_sentinel_2_l2a``)."""
    if field not in FIELDS:
        raise KeyError(f"unknown index field '{field}' (known: {', '.join(FIELDS)})")
    return f"{field}_{column(group)}"


@dataclass(frozen=True)
class ChipIndex:
    """One row per chip, in store order; per-group fields by name."""

    frame: gpd.GeoDataFrame

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def groups(self) -> list[str]:
        """The group columns present (as they appear in column names)."""
        return [c.removeprefix("status_") for c in self.frame.columns if c.startswith("status_")]

    def has(self, field: str, group: str) -> bool:
        """Whether the index holds ``field`` for ``group`` (co-registration columns are optional)."""
        return field_column(field, group) in self.frame.columns

    def get(self, field: str, group: str) -> pd.Series:
        """The ``field`` column of ``group``."""
        return self.frame[field_column(field, group)]

    def columns_of(self, field: str) -> list[str]:
        """The ``field`` columns of every group present (e.g. every ``item_ids_<group>``)."""
        return [field_column(field, g) for g in self.groups if field_column(field, g) in self.frame.columns]

    def status(self, group: str) -> pd.Series:
        """Status names of ``group`` per chip."""
        return self.get("status", group).astype(str)

    def built(self, groups: Iterable[str], statuses: Sequence[str | Status] = (Status.OK,)) -> np.ndarray:
        """Rows whose every group in ``groups`` has one of ``statuses``."""
        names = [str(s) for s in statuses]
        keep = np.ones(len(self.frame), bool)
        for g in groups:
            keep &= self.status(g).isin(names).to_numpy()
        return keep

    def class_fractions(self) -> pd.DataFrame:
        """Each chip's share of valid label pixels per class code (columns: int codes; empty
        without labels, NaN for chips without label data).
        """
        cols = [c for c in self.frame.columns if c.startswith(CLASS_FRACTION)]
        out = pd.DataFrame({int(c.removeprefix(CLASS_FRACTION)): self.frame[c].to_numpy() for c in cols},
                           index=self.frame.index)
        return out[sorted(out.columns)]

    def datetime(self, group: str) -> pd.Series:
        """Acquisition times of ``group`` (UTC; NaT where none)."""
        return pd.to_datetime(self.get("datetime", group), utc=True)


__all__ = ["CLASS_FRACTION", "FIELDS", "ChipIndex", "column", "field_column"]
