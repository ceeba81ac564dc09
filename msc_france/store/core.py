"""The MSC-France store: one Zarr v3 group, one subgroup per sensor, a GeoParquet chip index.

Layout (format version 2, :data:`~msc_france.store.schema.FORMAT_VERSION`; docs/dataset-format.md)::

    STORE/
      zarr.json                 root attrs "msc_france": format version, recipe, sensors, counts
      chip_id, chip_xmin, chip_ymax, split          (chip,)  coordinates of every chip
      <sensor>/                 one group per reflectance sensor
        image                   (chip, band, y, x) uint16 reflectance x 10000, or uint8 (aerial)
        valid                   (chip, y, x) uint8: 1 = data present and clear
        overviews/<f>/          per overview factor of the recipe: image, valid, x, y at gsd x f
        band, chip_id, chip_xmin, chip_ymax, spatial_ref      coordinates / CF grid mapping
        status, datetime, item_ids, cloud_fraction, valid_fraction, harmonization  (chip,)
      labels/                   when the recipe has a label source: class (chip, y, x) + same metadata
      index.parquet             GeoParquet: chip id, Lambert-93 footprint, WGS84 bbox, region, split,
                                per-sensor status
      _commits/shard-NNNNNN.json  the done marks: written by a build task after its shard's data

Image arrays hold one chip per chunk and ``chips_per_shard`` chips per shard file (zstd). A build
task owns whole shards, writes the data, then its commit file; both writes are atomic (temp file +
rename), so a killed build leaves every shard either old or new and every done mark true.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import zarr

from msc_france.errors import StoreError, first_line
from msc_france.fsutil import atomic_path, interrupted_writes
from msc_france.grid import Chip
from msc_france.splits import SplitRule
from msc_france.store.chip_index import ChipIndex
from msc_france.store.meta import BandStats, ConsolidateSummary, LabelClasses, StoreMeta
from msc_france.store.overviews import overview_path
from msc_france.store.records import ChipRecord, ShardCommit
from msc_france.store.schema import (
    FORMAT_VERSION,
    Layer,
    StoreSchema,
    chip_transforms,
    pixel_centres,
)

if TYPE_CHECKING:
    import geopandas as gpd
    import xarray as xr

    from msc_france.store.schema import SensorFacts


def is_remote(path: str) -> bool:
    """True for object-store URLs (``s3://``, ``gs://``, ``az://``, ...), False for local paths."""
    return "://" in path and not path.startswith("file://")


#: Chips a store may hold (all of France in 240 m chips is about 9.5 million).
MAX_STORE_CHIPS = 100_000_000


class Store:
    """An MSC-France store on the local file system."""

    def __init__(self, path: str | Path, group: zarr.Group) -> None:
        self.url = str(path)
        self.remote = is_remote(self.url)
        #: The local directory (``Path``), or the URL of a store on object storage.
        self.path: Any = self.url if self.remote else Path(path)
        self.fs, self.fs_root = fsspec.core.url_to_fs(self.url)
        self.root = group
        self._meta: tuple[Any, StoreMeta] | None = None  # (the raw attributes, their parse)

    # ------------------------------------------------------------------ side files (fsspec)

    def _key(self, rel: str) -> str:
        return f"{self.fs_root.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        """Whether the store holds the file ``rel`` (relative to its root)."""
        return bool(self.fs.exists(self._key(rel)))

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of ``rel``."""
        return bytes(self.fs.cat_file(self._key(rel)))

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Write ``rel`` so that readers see the old or the new content, never a part.

        Local files: temp file, fsync, rename. Object stores: one PUT (atomic per object).
        """
        if self.remote:
            self.fs.pipe_file(self._key(rel), data)
            return
        path = Path(self._key(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def remove(self, rel: str) -> None:
        """Delete the side file ``rel``."""
        self.fs.rm_file(self._key(rel))

    def list_files(self, pattern: str) -> list[str]:
        """Paths (relative to the root) of the files matching a glob ``pattern``."""
        root = self.fs_root.rstrip("/") + "/"
        return sorted(p[len(root):] if p.startswith(root) else p for p in self.fs.glob(self._key(pattern)))

    # ------------------------------------------------------------------ opening

    @property
    def meta(self) -> StoreMeta:
        """The root ``msc_france`` attributes, parsed (once per version of them: ``layers``,
        ``chip_size_m`` and friends read it on every call).
        """
        raw = self.root.attrs["msc_france"]
        if self._meta is None or self._meta[0] != raw:  # a copy: an in-place change is seen too
            self._meta = (copy.deepcopy(raw), StoreMeta.from_json(raw))
        return self._meta[1]

    def write_meta(self, meta: StoreMeta) -> None:
        """Replace the root ``msc_france`` attributes."""
        self.root.attrs["msc_france"] = meta.to_json()

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> Store:
        """Open an existing store (a directory or an ``s3://``, ``gs://``, ``az://`` URL), checking it
        is one and that its format version is supported.
        """
        p = str(path)
        try:
            fs, root = fsspec.core.url_to_fs(p)
            exists, has_meta = fs.exists(root), fs.exists(f"{root.rstrip('/')}/zarr.json")
        except Exception as e:  # OSError, and the cloud SDKs' own (botocore's EndpointConnectionError)
            raise StoreError(f"cannot reach store {p}: unreachable ({first_line(e, 200)})") from None
        if not exists:
            raise StoreError(f"no store at {p}")
        if not has_meta:
            raise StoreError(f"{p} is not an msc-france store (no zarr.json)")
        if "://" not in p:
            _check_metadata_files(Path(p))
        try:
            g = zarr.open_group(p, mode=mode, zarr_format=3, use_consolidated=False)
        except Exception as e:
            raise StoreError(f"cannot open store {p}: {first_line(e)}") from None
        raw = g.attrs.get("msc_france")
        if not isinstance(raw, dict) or "format_version" not in raw:
            raise StoreError(f"{p} is a Zarr group but not an msc-france store")
        try:
            meta = StoreMeta.from_json(raw)
        except KeyError as e:
            raise StoreError(f"store {p} is damaged: its root attributes lack {e.args[0]}") from None
        except (TypeError, ValueError) as e:
            raise StoreError(f"store {p} is damaged: its root attributes are malformed ({first_line(e)})") from None
        version = meta.format_version
        if version > FORMAT_VERSION:
            raise StoreError(f"store {p} has format version {version}, newer than this msc-france supports "
                             f"({FORMAT_VERSION}); upgrade msc-france")
        if version < FORMAT_VERSION:
            raise StoreError(f"store {p} has format version {version}, older than this msc-france reads "
                             f"({FORMAT_VERSION}: per-chip coordinates); rebuild it with `msc-france build`")
        store = cls(p, g)
        store._check_shapes()
        return store

    def _check_shapes(self) -> None:
        """Refuse array metadata that disagrees with the root attributes before any array is read:
        a ``chip_id`` claiming 10^12 chips, or a chip larger than the chip size says, would make the
        first read allocate terabytes.

        Raises:
            StoreError: naming the array.
        """
        meta = self.meta
        try:
            n = int(self.root["chip_id"].shape[0])
            # register() records the count it is growing to before it resizes (a killed
            # registration leaves arrays up to that size).
            bound = meta.chip_bound
            if n > bound or n > MAX_STORE_CHIPS:
                raise StoreError(f"store {self.url} is damaged: chip_id holds {n} entries, its attributes "
                                 f"record {bound} chips")
            for L in self.layers:
                px = L.pixels(self.chip_size_m)
                want = (px, px) if L.is_label else (len(L.bands), px, px)
                shape = tuple(int(v) for v in self.root[L.group][L.data_name].shape)
                if shape[1:] != want or shape[0] > bound:
                    raise StoreError(f"store {self.url} is damaged: {L.group}/{L.data_name} has shape {shape}, "
                                     f"the schema says (chips <= {bound}, {', '.join(map(str, want))})")
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"store {self.url} is damaged: {first_line(e)}") from None

    @classmethod
    def create_or_open(cls, path: str | Path, schema: StoreSchema) -> Store:
        """Open ``path`` for building with ``schema``, creating the store if it does not exist
        (:func:`msc_france.store.create.create_or_open`).

        Raises:
            BadInputError: the path is a file, or an existing store was built with another chip
                size, other sensors or other rules.
        """
        from msc_france.store.create import create_or_open

        return create_or_open(path, schema)

    # ------------------------------------------------------------------ structure

    @property
    def layers(self) -> list[Layer]:
        """The store's groups."""
        return list(self.meta.layers)

    def layer(self, group: str) -> Layer:
        """The layer called ``group``."""
        for L in self.layers:
            if L.group == group:
                return L
        raise StoreError(f"store {self.path} has no sensor '{group}' (has {[L.group for L in self.layers]})")

    @property
    def chip_size_m(self) -> int:
        """Chip side in metres."""
        return self.meta.chip_size_m

    @property
    def chips_per_shard(self) -> int:
        """Chips per shard file."""
        return self.meta.chips_per_shard

    @property
    def n_chips(self) -> int:
        """Chips registered in the store."""
        return int(self.root["chip_id"].shape[0])

    def chip_ids(self) -> list[str]:
        """Registered chip ids, in store order."""
        n = self.n_chips
        return [str(x) for x in self.root["chip_id"][:n]] if n else []

    # ------------------------------------------------------------------ registering chips

    def register(self, chips: list[Chip], region: str, split: SplitRule) -> dict[str, int]:
        """Give new chips the next indices and their split (existing ones keep both); returns
        chip id -> index.
        """
        existing = {cid: i for i, cid in enumerate(self.chip_ids())}
        new = [c for c in chips if c.id not in existing]
        if new:
            n0, n1 = self.n_chips, self.n_chips + len(new)
            # The bound Store.open checks array lengths against; and the store is incomplete from
            # here on, before any array grows, so readers keep to the chips the index lists.
            self.write_meta(self.meta.but(n_chips_pending=n1, complete=False))
            ids = np.array([c.id for c in new])
            xmin = np.array([c.bounds[0] for c in new], np.float64)
            ymax = np.array([c.bounds[3] for c in new], np.float64)
            splits = np.array([split.split(c.size_m, c.col, c.row) for c in new])
            # Resize every array first, then fill the coordinates; a crash in between leaves
            # empty chip ids, which the next build re-registers.
            for L in self.layers:
                g = self.root[L.group]
                for name in g.array_keys():
                    a = g[name]
                    if a.ndim and name != "band":
                        a.resize((n1, *a.shape[1:]))
                g["chip_id"][n0:n1] = ids
                g["chip_xmin"][n0:n1] = xmin
                g["chip_ymax"][n0:n1] = ymax
                n = L.pixels(self.chip_size_m)
                g["x"][n0:n1] = pixel_centres(xmin, n, L.gsd)
                g["y"][n0:n1] = pixel_centres(ymax, n, -L.gsd)
                g["spatial_transform"][n0:n1] = chip_transforms(xmin, ymax, L.gsd)
                for f in L.overviews:
                    og = self.root[overview_path(L.group, f)]
                    for name in og.array_keys():
                        if og[name].ndim:
                            og[name].resize((n1, *og[name].shape[1:]))
                    og["x"][n0:n1] = pixel_centres(xmin, n // f, L.gsd * f)
                    og["y"][n0:n1] = pixel_centres(ymax, n // f, -L.gsd * f)
                    og["spatial_transform"][n0:n1] = chip_transforms(xmin, ymax, L.gsd * f)
            for name, values in (("split", splits), ("chip_xmin", xmin), ("chip_ymax", ymax), ("chip_id", ids)):
                a = self.root[name]
                a.resize((n1,))
                a[n0:n1] = values
            for i, c in enumerate(new):
                existing[c.id] = n0 + i
        meta = self.meta
        regions_now = meta.regions if region in meta.regions else (*meta.regions, region)
        self.write_meta(meta.but(regions=regions_now, n_chips=self.n_chips, complete=False))
        regions = self.chip_regions()
        for c in chips:
            regions.setdefault(c.id, [])
            if region not in regions[c.id]:
                regions[c.id].append(region)
        self.write_bytes_atomic("_regions.json", json.dumps(regions).encode())
        return {c.id: existing[c.id] for c in chips}

    def chip_regions(self) -> dict[str, list[str]]:
        """Region names of every chip (``_regions.json``)."""
        return json.loads(self.read_bytes("_regions.json")) if self.exists("_regions.json") else {}

    # ------------------------------------------------------------------ writing shards

    def _shard_arrays(self, group: str, factor: int) -> tuple[zarr.Array, zarr.Array]:
        L = self.layer(group)
        g = self.root[group if factor == 1 else overview_path(group, factor)]
        return g[L.data_name], g["valid"]

    def read_shard(self, group: str, shard: int, factor: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The stored (data, valid) of every chip slot of ``shard`` in ``group`` (at overview ``factor``)."""
        data, valid = self._shard_arrays(group, factor)
        start = shard * self.chips_per_shard
        stop = min(start + self.chips_per_shard, data.shape[0])
        return data[start:stop], valid[start:stop]

    def write_shard(self, group: str, shard: int, data: np.ndarray, valid: np.ndarray, factor: int = 1) -> None:
        """Write every chip slot of ``shard`` in ``group`` (at overview ``factor``) at once: the shard
        file is replaced whole, so a reader sees the old shard or the new one. The done mark
        (:meth:`write_commit`) comes after.

        Raises:
            ValueError: ``data`` or ``valid`` is not the shape of the shard.
        """
        d_arr, v_arr = self._shard_arrays(group, factor)
        start = shard * self.chips_per_shard
        stop = min(start + self.chips_per_shard, d_arr.shape[0])
        if data.shape != (stop - start, *d_arr.shape[1:]) or valid.shape != (stop - start, *v_arr.shape[1:]):
            raise ValueError(f"shard {shard} of {group} holds {(stop - start, *d_arr.shape[1:])}, got {data.shape} "
                             f"and {valid.shape}")
        d_arr[start:stop] = data
        v_arr[start:stop] = valid

    # ------------------------------------------------------------------ commits (done marks)

    @staticmethod
    def commit_name(shard: int) -> str:
        """Done-mark file of shard ``shard``, relative to the store root."""
        return f"_commits/shard-{shard:06d}.json"

    def write_commit(self, commit: ShardCommit) -> None:
        """Record the chips of ``commit.shard`` as built (after their data is written)."""
        self.write_bytes_atomic(self.commit_name(commit.shard), json.dumps(commit.to_json()).encode())

    def read_commit(self, shard: int, tolerant: bool = False) -> dict[str, ChipRecord]:
        """Chip records of one shard ({} when the shard was never committed).

        A done mark that cannot be parsed raises a StoreError that says the way out, unless
        ``tolerant`` (the build): then its chips count as not built and are built again.
        """
        name = self.commit_name(shard)
        if not self.exists(name):
            return {}
        try:
            return dict(ShardCommit.from_json(json.loads(self.read_bytes(name))).chips)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):  # JSONDecodeError is one
            if tolerant:
                return {}
            raise StoreError(f"corrupt done mark {self.url}/{name}: run the same build again, which rebuilds the "
                             "chips of that shard") from None

    def read_commits(self, tolerant: bool = False) -> dict[str, ChipRecord]:
        """All chip records, keyed by chip id (see :meth:`read_commit` for ``tolerant``)."""
        out: dict[str, ChipRecord] = {}
        for name in self.list_files("_commits/shard-*.json"):
            out.update(self.read_commit(int(Path(name).stem.split("-")[1]), tolerant))
        return out

    # ------------------------------------------------------------------ the build lock

    def remove_interrupted_writes(self) -> int:
        """Delete the temporary files killed writes left (local stores; see
        :func:`msc_france.fsutil.interrupted_writes`); returns how many.

        Call it only holding the build lock, with no task of the build in flight: then no other
        writer exists, and every such file is a leftover.
        """
        if self.remote:
            return 0
        found = interrupted_writes(self.path)
        for p in found:
            p.unlink(missing_ok=True)
        return len(found)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive build lock; a second concurrent build is refused with who holds it
        (see :mod:`msc_france.store.lock`).
        """
        from msc_france.store.lock import build_lock

        return build_lock(self)

    # ------------------------------------------------------------------ consolidation

    def consolidate(self) -> ConsolidateSummary:
        """Fold the done marks into per-chip metadata, statistics, ``index.parquet`` and the
        consolidated Zarr metadata (see :func:`msc_france.store.consolidate.consolidate`).
        """
        from msc_france.store.consolidate import consolidate

        return consolidate(self)

    def stats(self, group: str) -> BandStats | None:
        """The normalisation statistics of ``group`` (per band, stored units), from consolidation;
        None before the first consolidation.
        """
        return BandStats.from_json(self.root[group].attrs.get("stats"))

    def chip_xarray(self, chip_id: str, group: str, factor: int = 1) -> xr.Dataset:
        """One chip of ``group`` as a georeferenced :class:`xarray.Dataset` (image or class, valid;
        x/y pixel centres, band names, CRS): see :func:`msc_france.store.xr.chip_dataset`.
        """
        from msc_france.store.xr import chip_dataset

        return chip_dataset(self, chip_id, group, factor)

    def facts(self, group: str) -> SensorFacts:
        """What the sensor of ``group`` is (title, provenance, licence, display name, class colours),
        as its catalog stated when the store was created.
        """
        from msc_france.store.schema import FACTS_ATTR, SensorFacts

        self.layer(group)  # a one-line error for a group the store does not hold
        return SensorFacts.from_json(self.root[group].attrs.get(FACTS_ATTR), group)

    def classes(self) -> LabelClasses:
        """The label classes (empty without labels)."""
        from msc_france.store.schema import LABELS_GROUP

        if LABELS_GROUP not in {L.group for L in self.layers}:
            return LabelClasses()
        return LabelClasses.from_attrs(self.root[LABELS_GROUP].attrs)

    def chip_index(self) -> ChipIndex:
        """The checked chip index as a :class:`ChipIndex` (per-group fields by name)."""
        return ChipIndex(self.index())

    def index(self, checked: bool = True) -> gpd.GeoDataFrame:
        """The chip index (GeoParquet).

        Args:
            checked: refuse an index that does not describe the arrays (another length, other chip
                ids or order, a duplicated chip): a reader would index the wrong chips. ``validate``
                reads it unchecked to list every difference.

        Raises:
            StoreError: the file is missing, unreadable, or (checked) out of step with the arrays.
        """
        import geopandas as gpd

        if not self.exists("index.parquet"):
            raise StoreError(f"store {self.url} has no index.parquet (build did not finish; run build again)")
        try:
            idx = gpd.read_parquet(io.BytesIO(self.read_bytes("index.parquet")))
        except Exception as e:  # pyarrow and geopandas raise their own types for damaged files
            raise StoreError(f"store {self.url}: index.parquet unreadable ({first_line(e, 100)}); run build again "
                             "to rewrite it") from None
        if checked:
            problem = self._index_problem(idx)
            if problem:
                raise StoreError(f"store {self.url}: index.parquet {problem}; run build again to rewrite it "
                                 "(msc-france validate lists every difference)")
        return idx

    def appending(self, idx: gpd.GeoDataFrame, ids: list[str]) -> bool:
        """Whether the index is the store as it was before an append that has not finished: the
        store is marked incomplete, and the index lists fewer chips than the arrays hold, in the
        same order (an append registers new chips after the old ones and rewrites the index last).
        """
        if self.meta.complete or not len(idx) < len(ids):
            return False
        listed = [str(c) for c in idx["chip_id"]]
        return listed == ids[: len(listed)] and [int(v) for v in idx["chip_index"]] == list(range(len(listed)))

    def _index_problem(self, idx: gpd.GeoDataFrame) -> str | None:
        if not {"chip_id", "chip_index", "split"} <= set(idx.columns):
            return "lacks its chip_id, chip_index or split column"
        ids = self.chip_ids()
        if self.appending(idx, ids):
            ids = ids[: len(idx)]  # an append in progress: readers see the chips the index lists
        if len(idx) != len(ids):
            return f"has {len(idx)} rows; the arrays hold {len(ids)} chips"
        dup = idx["chip_id"].duplicated()
        if dup.any():
            return f"lists chip {idx['chip_id'][dup].iloc[0]} twice"
        if list(idx["chip_id"]) != ids or [int(v) for v in idx["chip_index"]] != list(range(len(ids))):
            return "does not match the arrays' chip ids and order"
        return None


def _check_metadata_files(root: Path) -> None:
    """Refuse a local store whose metadata files (the root's, its groups' and arrays' ``zarr.json``
    and the index) are not regular files: a FIFO there would block every reader for ever.

    Raises:
        StoreError: naming the file.
    """
    import stat

    for f in (root / "zarr.json", root / "index.parquet", *root.glob("*/zarr.json"), *root.glob("*/*/zarr.json")):
        try:
            mode = os.stat(f).st_mode
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StoreError(f"store {root} is damaged: cannot read {f.name} ({e.strerror})") from None
        if not stat.S_ISREG(mode):
            raise StoreError(f"store {root} is damaged: {f.relative_to(root)} is not a regular file (a FIFO, "
                             "socket or device)")
