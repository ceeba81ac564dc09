"""Reading chips back: the one path the dataset, previews, exports and evaluation go through.

Zarr returns the fill value for a chunk whose shard file is missing, and a damaged shard raises
a codec error from deep inside zarr. A reader must never hand out fill for a chip the store says
was built, nor crash with a codec message: :class:`ChipReader` checks both and raises a one-line
:class:`~msc_france.errors.StoreError` naming the chip, the array and the shard file.
"""

from __future__ import annotations

import numpy as np
import zarr

from msc_france.errors import StoreError, first_line
from msc_france.store.core import Store
from msc_france.store.overviews import overview_path
from msc_france.store.records import Status
from msc_france.store.shards import ShardLayout

#: Status codes whose pixels were written (flagged chips are kept, below the valid threshold).
WRITTEN = {s.code for s in Status if s.written}


class ChipReader:
    """Chip arrays of one store, checked against what the store says it holds.

    Args:
        store: an open store.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._status: dict[str, np.ndarray] = {}
        self._ids: list[str] | None = None
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._layouts: dict[tuple[str, str], ShardLayout | None] = {}

    def shard_file(self, group: str, array: str, index: int, factor: int = 1) -> str:
        """Path (relative to the store root) of the shard holding chip ``index`` of an array (at
        overview ``factor``).
        """
        path = group if factor == 1 else overview_path(group, factor)
        try:
            rest = "/".join("0" for _ in self._array(path, array).shape[1:])
        except Exception:  # unreadable metadata (the error being reported): the shard's folder
            return f"{path}/{array}/c/{index // self.store.chips_per_shard}"
        return f"{path}/{array}/c/{index // self.store.chips_per_shard}/{rest}"

    def status(self, group: str, index: int) -> int:
        """The consolidated status code of chip ``index`` in ``group``."""
        if group not in self._status:
            self._status[group] = np.asarray(self.store.root[group]["status"][:])
        st = self._status[group]
        return int(st[index]) if index < len(st) else Status.PENDING.code

    def chip_id(self, index: int) -> str:
        """The id of chip ``index``."""
        if self._ids is None:
            self._ids = self.store.chip_ids()
        return self._ids[index] if index < len(self._ids) else f"#{index}"

    def _array(self, path: str, array: str) -> zarr.Array:
        # Opened once per reader: a zarr group lookup costs as much as decoding a small chip.
        key = (path, array)
        if key not in self._arrays:
            self._arrays[key] = self.store.root[path][array]
        return self._arrays[key]

    def _layout(self, path: str, array: str) -> ShardLayout | None:
        # Local stores in the builder's layout are read without zarr's per-call cost (store.shards).
        key = (path, array)
        if key not in self._layouts:
            self._layouts[key] = None if self.store.remote else ShardLayout.of(
                self._array(path, array), str(self.store.path / path / array))
        return self._layouts[key]

    def read(self, group: str, array: str, index: int, factor: int = 1) -> np.ndarray:
        """Chip ``index`` of ``group/array`` as stored, at full resolution or overview ``factor``.

        Raises:
            StoreError: the shard cannot be decoded, or its file is missing for a chip the store
                marks as built.
        """
        return self.read_range(group, array, index, index + 1, factor)[0]

    def read_range(self, group: str, array: str, start: int, stop: int, factor: int = 1) -> np.ndarray:
        """Chips ``start:stop`` of ``group/array`` in one read (one zarr call: within a shard it
        costs little more than one chip), checked as :meth:`read` checks one.

        Raises:
            StoreError: as :meth:`read`, naming the first chip concerned.
        """
        path = group if factor == 1 else overview_path(group, factor)
        try:
            layout = self._layout(path, array)
            data = layout.read(start, stop) if layout is not None else np.asarray(self._array(path, array)[start:stop])
        except Exception as e:  # codec errors (zstd, truncated shard index) come in many types
            raise StoreError(f"chip {self.chip_id(start)} of {path}/{array} cannot be read from "
                             f"{self.shard_file(group, array, start, factor)}: {first_line(e, 160)} "
                             "(store damaged: run msc-france validate)") from None
        # Fill comes back silently for a missing shard: only an all-fill chip can be one.
        for i in range(start, stop):
            if not data[i - start].any() and self.status(group, i) in WRITTEN:
                shard = self.shard_file(group, array, i, factor)
                if not self.store.exists(shard):
                    raise StoreError(f"chip {self.chip_id(i)} of {path}/{array} is marked built but its shard "
                                     f"file {shard} is missing (store damaged: run msc-france validate)")
        return data
