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
    import stat

    from msc_france.errors import BadInputError

    # Never through a link: a lock that is a symlink would have its target emptied below.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise BadInputError(f"lock file {path} cannot be opened as a regular file ({e.strerror}); "
                            "remove it if no msc-france process runs") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInputError(f"lock file {path} is not a regular file; remove it if no msc-france process runs")
    f = os.fdopen(fd, "a+")
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


def check_regular(path: Path, what: str) -> None:
    """Refuse a path that is not a regular file (a FIFO would block a reader for ever, a device never
    end); links to regular files are fine.

    Raises:
        BadInputError: naming what ``path`` is.
    """
    import stat

    from msc_france.errors import BadInputError

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BadInputError(f"{what} not found: {path}") from None
    except OSError as e:
        raise BadInputError(f"cannot read {what} {path}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise BadInputError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise BadInputError(f"{what} {path} is {kind}, not a regular file")


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


#: Written in every output folder a command creates (preview, export, eval): the command may write
#: there again, and ``clean`` tooling knows it is ours.
OUTPUT_MARKER = ".msc-france-output"


def claim_output_dir(out: Path, kind: str) -> None:
    """Make ``out`` a folder the command ``kind`` may write into, or refuse it, before any work.

    The one claim rule for every output folder: accepted are a new folder, an empty one, or one
    this kind of command wrote before (its marker); the marker is then written. Anything else is
    refused in one line naming what is there: a file, a folder inside a Zarr store, another
    command's output, and a folder holding files without the marker, even when their names are the
    ones the command would write (a model repository's ``config.json``, a hand-written ``card.md``).

    Raises:
        BadInputError: naming what was found.
    """
    from msc_france.errors import BadInputError, printable

    out = Path(out)
    refuse_inside_store(out, f"{kind} folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BadInputError(f"{kind} output {out} is {'a symbolic link' if out.is_symlink() else 'a file'}, "
                            "not a folder")
    marker = out / OUTPUT_MARKER
    if marker.is_symlink() or (marker.exists() and not marker.is_file()):
        raise BadInputError(f"{kind} folder {out}: its {OUTPUT_MARKER} is not a regular file; use another --out")
    if marker.is_file():
        found = marker.read_text(encoding="utf-8", errors="replace").strip()
        if found != kind:
            raise BadInputError(f"{out} holds msc-france {found} output, not {kind} output; use another --out")
        return
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir())
        if foreign:
            shown = ", ".join(printable(n) for n in foreign[:3]) + (f" (+{len(foreign) - 3} more)"
                                                                     if len(foreign) > 3 else "")
            raise BadInputError(f"{kind} folder {out} holds files msc-france did not write ({shown}); "
                                "use a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(kind + "\n", encoding="utf-8")


@contextlib.contextmanager
def output_dir(out: Path, kind: str) -> Iterator[Path]:
    """:func:`claim_output_dir`, then the body; if the body fails and the folder did not exist
    before, the folder and what the body wrote there go again (a failed command leaves no empty
    or half-written output behind). A folder that existed is left as it is.
    """
    import shutil

    out = Path(out)
    existed = out.exists()
    top = out  # the outermost folder this call makes (parents included)
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    claim_output_dir(out, kind)
    try:
        yield out
    except BaseException:
        if not existed:
            shutil.rmtree(top, ignore_errors=True)  # made by this call: nothing in it is anyone else's
        raise
