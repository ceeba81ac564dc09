"""The MSC-France store: format, creation, registration, commits, consolidation (``core``) and the
read API every reader goes through (``read``)."""

from __future__ import annotations

from msc_france.store.core import (
    DONE,
    FORMAT_VERSION,
    LABELS_GROUP,
    SPLITS,
    STATUS,
    STATUS_NAMES,
    Layer,
    Store,
    chip_split,
    is_remote,
    layers_for,
)
from msc_france.store.read import ChipReader

__all__ = ["DONE", "FORMAT_VERSION", "LABELS_GROUP", "SPLITS", "STATUS", "STATUS_NAMES", "ChipReader", "Layer",
           "Store", "chip_split", "is_remote", "layers_for"]
