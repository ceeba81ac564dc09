"""The MSC-France store: its schema (``schema``), the store itself (``core``: files, creation,
registration, done marks, locks), its records as values (``records``: statuses, chip records,
done marks), consolidation (``consolidate``), the read API every reader goes
through (``read``) and validation (``validate``).
"""

from __future__ import annotations

from msc_france.splits import ALL_SPLITS, SPLITS
from msc_france.store.core import Store, is_remote
from msc_france.store.read import ChipReader
from msc_france.store.records import ChipRecord, LayerRecord, ShardCommit, Status
from msc_france.store.schema import FORMAT_VERSION, LABELS_GROUP, Layer, StoreSchema

__all__ = ["ALL_SPLITS", "FORMAT_VERSION", "LABELS_GROUP", "SPLITS", "ChipReader", "ChipRecord", "Layer", "LayerRecord",
           "ShardCommit", "Status", "Store", "StoreSchema", "is_remote"]
