"""Local files: written so that readers see the old content or the new, never a part; and
exclusive locks (one build per store, one trainer per run directory).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it over ``path`` on success.

    On any failure (a full disk included) the temporary file is removed and the error re-raised,
    so nothing half-written is left behind, under either name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# Temporary files of an interrupted atomic write: ours (``atomic_path``) and zarr's LocalStore
# (``<name>.<uuid4 hex>.partial``). A writer killed between write and rename leaves one behind.
_LEFTOVER = re.compile(r"(^\..+\.\d+\.tmp$)|(\.[0-9a-f]{32}\.partial$)")


def interrupted_writes(root: Path) -> list[Path]:
    """The temporary files that interrupted atomic writes left under ``root`` (sorted)."""
    return sorted(p for p in Path(root).rglob("*") if _LEFTOVER.search(p.name) and p.is_file())


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created) for the block, writing who holds it.

    The kernel releases it if the holder dies. A second holder is refused at once with
    ``busy(holder)``, where ``holder`` says which process holds the lock.
    """
    import datetime as dt
    import fcntl
    import socket

    f = open(path, "a+")  # noqa: SIM115 (closed in every branch below)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise busy(holder) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
        f.flush()
        yield
    finally:
        f.seek(0)
        f.truncate()
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def zarr_store_at(path: Path) -> Path | None:
    """The Zarr store (or group) that ``path`` is, or lies inside: the nearest folder, ``path`` itself
    included, holding a ``zarr.json``; None when there is none.
    """
    p = Path(path).expanduser().resolve()
    for d in (p, *p.parents):
        if (d / "zarr.json").is_file():
            return d
    return None


def refuse_inside_store(path: Path, what: str) -> None:
    """Refuse an output ``path`` that is, or lies inside, a Zarr store: only the store writes there.

    Raises:
        BadInputError: naming the store.
    """
    from msc_france.errors import BadInputError

    store = zarr_store_at(path)
    if store is not None:
        where = "is" if store == Path(path).expanduser().resolve() else "is inside"
        raise BadInputError(f"{what} {path} {where} the Zarr store {store}: nothing is written into a store but "
                            "by the store itself; use another path")
