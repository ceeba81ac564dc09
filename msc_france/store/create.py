"""Creating a store, or opening an existing one for a build that must match it: the skeleton is
made in a hidden sibling and renamed into place (object stores: root attributes written last),
and an existing store's chip size, sensors and rules are checked against the build's schema.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import fsspec
import zarr

from msc_france.errors import BadInputError
from msc_france.store.core import FORMAT_VERSION, Store, is_remote
from msc_france.store.meta import StoreMeta
from msc_france.store.schema import StoreSchema, create_layout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_or_open(path: str | Path, schema: StoreSchema) -> Store:
    """Open ``path`` for building with ``schema``, creating the store if it does not exist.

    Raises:
        BadInputError: the path is a file, a non-empty folder that is not a store, or an existing
            store built with another chip size, other sensors or other rules.
    """
    if is_remote(str(path)):
        return _create_or_open_remote(str(path), schema)
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadInputError(f"output path {p} is a file, not a store directory")
    if p.exists() and any(p.iterdir()) and not (p / "zarr.json").exists():
        raise BadInputError(f"output directory {p} is not empty and is not an msc-france store")
    if (p / "zarr.json").exists():
        store = Store.open(p, mode="r+")
        check_compatible(store, schema)
        return store
    # Create the whole skeleton in a hidden sibling, then rename it into place: a build killed
    # during creation leaves no half-made store behind, only a temp dir removed next time.
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise BadInputError(f"cannot create store directory {p}: permission denied") from None
    if not os.access(p.parent, os.W_OK):
        raise BadInputError(f"store directory {p.parent} is not writable")
    for stale in p.parent.glob(f".{p.name}.creating-*"):
        if not _alive(int(stale.name.rsplit("-", 1)[1])):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
    tmp = p.parent / f".{p.name}.creating-{os.getpid()}"
    try:
        g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        _create(Store(tmp, g), schema)
        if p.exists():
            p.rmdir()  # an empty directory the user made
        tmp.rename(p)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Store.open(p, mode="r+")


def _create_or_open_remote(url: str, schema: StoreSchema) -> Store:
    # Object stores have no rename: the root attributes are written last, so a store whose
    # zarr.json lacks them is an interrupted creation, made again.
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(f"{root.rstrip('/')}/zarr.json"):
        g = zarr.open_group(url, mode="r+", zarr_format=3)
        if isinstance(g.attrs.get("msc_france"), dict):
            store = Store.open(url, mode="r+")
            check_compatible(store, schema)
            return store
    g = zarr.open_group(url, mode="w", zarr_format=3)
    _create(Store(url, g), schema)
    return Store.open(url, mode="r+")


def check_compatible(store: Store, schema: StoreSchema) -> None:
    """Refuse to build ``schema`` into ``store`` when its chip size, sensors or rules differ.

    Raises:
        BadInputError: naming the first differences.
    """
    m = store.meta
    if m.chip_size_m != schema.chip_size_m:
        raise BadInputError(
            f"store {store.path} has chip size {m.chip_size_m} m; the recipe asks for {schema.chip_size_m} m"
        )
    have = [L.group for L in m.layers]
    want = [L.group for L in schema.layers]
    if have != want:
        raise BadInputError(f"store {store.path} holds sensors {have}; the recipe asks for {want}")
    diffs = schema.rules.differences(m.recipe)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else "")
        raise BadInputError(f"store {store.path} was built with other rules: {shown}. One store holds one set of "
                            "rules: build into a new store, or use the store's recipe")


def _create(store: Store, schema: StoreSchema) -> None:
    create_layout(store.root, schema)
    store.write_meta(StoreMeta(
        format_version=FORMAT_VERSION, recipe=schema.rules.to_json(), chip_size_m=schema.chip_size_m,
        chips_per_shard=schema.chips_per_shard, layers=tuple(schema.layers),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds")))


__all__ = ["check_compatible", "create_or_open"]
