"""The MSC-France store: its schema (``schema``), the store itself (``core``: files, creation,
registration, done marks, locks), consolidation (``consolidate``), the read API every reader goes
through (``read``) and validation (``validate``).
"""

from __future__ import annotations

from msc_france.splits import ALL_SPLITS, SPLITS
from msc_france.store.core import Store, is_remote
from msc_france.store.read import ChipReader
from msc_france.store.schema import (
    DONE,
    FORMAT_VERSION,
    LABELS_GROUP,
    STATUS,
    STATUS_NAMES,
    Layer,
    StoreSchema,
)

__all__ = ["ALL_SPLITS", "DONE", "FORMAT_VERSION", "LABELS_GROUP", "SPLITS", "STATUS", "STATUS_NAMES", "ChipReader", "Layer",
           "Store", "StoreSchema", "is_remote"]
