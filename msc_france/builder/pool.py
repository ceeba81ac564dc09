"""Source files kept open for one shard task, so each source block is fetched and decoded once per
shard rather than once per chip.

The 16 chips of a shard lie side by side (7.7 km at 1,920 m) and a Sentinel-2 COG block covers
10 km: chip by chip, every neighbour opened the same files again (a header read each time) and
fetched and decoded the same blocks again (GDAL's block cache belongs to an open dataset and goes
with it). Within a task the warper asks the pool instead of opening: a file (or one of its
overview levels) is opened once, its blocks stay in GDAL's cache while the task runs, and the task
closes everything when it ends. The warp itself is unchanged, so the stored bytes are identical
with or without the pool (tests/builder/test_pool.py); ``MSC_FRANCE_READ_POOL=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextvars import ContextVar

import rasterio

#: Files kept open per task at most (the least recently used is closed first).
MAX_OPEN = 48
#: Set to 0 to open every file per chip, as before the pool (benchmarks compare the two).
POOL_ENV = "MSC_FRANCE_READ_POOL"


class DatasetPool:
    """Open datasets keyed by (signed href, overview level), least recently used closed first."""

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self.max_open = max_open
        self._open: OrderedDict[tuple[str, int | None], rasterio.io.DatasetReader] = OrderedDict()
        self.opened = 0  # files opened (a header read each), for tests and benchmarks

    def get(self, name: str, level: int | None = None) -> rasterio.io.DatasetReader:
        """The dataset ``name`` (at overview ``level``), opened now or kept from an earlier chip.

        Raises:
            rasterio.errors.RasterioError: the file cannot be opened.
        """
        key = (name, level)
        ds = self._open.get(key)
        if ds is not None and not ds.closed:
            self._open.move_to_end(key)
            return ds
        ds = rasterio.open(name) if level is None else rasterio.open(name, OVERVIEW_LEVEL=level)
        self.opened += 1
        self._open[key] = ds
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return ds

    def drop(self, name: str) -> None:
        """Close every dataset of ``name`` (after a failed read: the next try opens it afresh)."""
        for key in [k for k in self._open if k[0] == name]:
            self._open.pop(key).close()

    def close(self) -> None:
        """Close everything."""
        while self._open:
            _, ds = self._open.popitem()
            ds.close()


_ACTIVE: ContextVar[DatasetPool | None] = ContextVar("msc_france_dataset_pool", default=None)


def active_pool() -> DatasetPool | None:
    """The pool of the task running in this thread, if any."""
    return _ACTIVE.get()


@contextlib.contextmanager
def task_pool() -> Iterator[DatasetPool | None]:
    """A pool for the reads made inside the block (one shard task), closed at its end; none when
    ``MSC_FRANCE_READ_POOL=0``.
    """
    if os.environ.get(POOL_ENV, "1") == "0":
        yield None
        return
    pool = DatasetPool()
    token = _ACTIVE.set(pool)
    try:
        yield pool
    finally:
        _ACTIVE.reset(token)
        pool.close()


__all__ = ["MAX_OPEN", "POOL_ENV", "DatasetPool", "active_pool", "task_pool"]
