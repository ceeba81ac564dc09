"""Looking at a store: ``info`` (a summary) and ``validate`` (schema, completeness, checksums)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from msc_france.errors import StoreError, first_line
from msc_france.fsutil import interrupted_writes
from msc_france.progress import Progress
from msc_france.splits import ALL_SPLITS
from msc_france.store import FORMAT_VERSION, ChipReader, Layer, Store
from msc_france.store.chip_index import field_column
from msc_france.store.meta import BandStats, LayerInfo, StoreInfo
from msc_france.store.overviews import overview_path
from msc_france.store.records import Commits, Status
from msc_france.store.schema import chip_checksum


def info(store: Store) -> StoreInfo:
    """A summary of the store: format, chips, regions, splits, per-layer status and statistics."""
    m = store.meta
    n = store.n_chips
    splits = [str(s) for s in store.root["split"][:n]] if n else []
    layers = {}
    for L in store.layers:
        g = store.root[L.group]
        status = g["status"][:n] if n else np.zeros(0, np.uint8)
        vf = g["valid_fraction"][:n] if n else np.zeros(0)
        layers[L.group] = LayerInfo(
            sensor=L.sensor, gsd=L.gsd, bands=L.bands, dtype=L.dtype, chip_pixels=L.pixels(store.chip_size_m),
            status={k.value: int((status == k.code).sum()) for k in Status if (status == k.code).any()},
            mean_valid_fraction=float(np.nanmean(vf)) if n and np.isfinite(vf).any() else None,
            stats=BandStats.from_json(g.attrs.get("stats")))
    return StoreInfo(path=store.url, format_version=m.format_version, recipe=m.recipe_name,
                     chip_size_m=m.chip_size_m, chips_per_shard=m.chips_per_shard, n_chips=n, regions=m.regions,
                     complete=m.complete, layers=layers, splits={s: splits.count(s) for s in ALL_SPLITS},
                     problems=tuple(cheap_problems(store)))


def cheap_problems(store: Store) -> list[str]:
    """What ``info`` can see without decoding chips: the index and the done marks (run
    ``validate`` for everything else).
    """
    problems = []
    if not store.exists("index.parquet"):
        problems.append("index.parquet missing (run build again)")
    else:
        try:
            idx = store.index(checked=False)
            if len(idx) != store.n_chips:
                problems.append(f"index.parquet has {len(idx)} rows for {store.n_chips} chips (run validate)")
        except Exception as e:  # a damaged parquet file raises pyarrow's own types
            problems.append(f"index.parquet unreadable ({first_line(e, 100)}): run validate")
    try:
        store.read_commits()
    except StoreError as e:
        problems.append(str(e))
    return problems


@dataclass
class ValidationReport:
    """Problems found by :func:`validate`: ``corrupt`` ones mean data is wrong, ``incomplete`` ones
    mean a build has work left.
    """

    corrupt: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    checked_chips: int = 0

    @property
    def ok(self) -> bool:
        """True when the store is complete and consistent."""
        return not self.corrupt and not self.incomplete


def _coordinate_problems(store: Store, L: Layer, n: int) -> list[str]:
    """Per-chip x/y and transforms must agree with the chip grid (what GIS tools georeference by)."""
    from msc_france.store.schema import chip_transforms, pixel_centres

    if n == 0:
        return []
    g = store.root[L.group]
    px = L.pixels(store.chip_size_m)
    try:
        x, y, t = g["x"][:n], g["y"][:n], g["spatial_transform"][:n]
    except Exception as e:
        return [f"{L.group}: coordinate arrays unreadable ({first_line(e, 120)})"]
    xmin, ymax = store.root["chip_xmin"][:n], store.root["chip_ymax"][:n]
    out = []
    registered = np.array([bool(c) for c in store.chip_ids()])
    for name, have, want in (("x", x, pixel_centres(xmin, px, L.gsd)), ("y", y, pixel_centres(ymax, px, -L.gsd)),
                             ("spatial_transform", t, chip_transforms(xmin, ymax, L.gsd))):
        bad = ~np.all(np.isclose(have, want, rtol=0, atol=1e-6), axis=1) & registered
        if bad.any():
            out.append(f"{L.group}/{name}: {int(bad.sum())} chip(s) disagree with chip_xmin/chip_ymax")
    return out


def validate(store: Store, checksums: bool = True, progress: Progress | None = None) -> ValidationReport:
    """Check schema, shapes, chunking, completeness and (optionally) every chip's checksum.

    Each check is a small function adding to one report; the checks that need readable arrays and
    done marks run only when the earlier ones found nothing corrupt. ``progress`` counts
    chip-sensor checksums as they are verified.
    """
    rep = ValidationReport()
    m = store.meta
    if m.format_version != FORMAT_VERSION:
        rep.corrupt.append(f"format version {m.format_version} (this msc-france reads and checks version "
                           f"{FORMAT_VERSION}; rebuild the store)")
        return rep
    n = store.n_chips
    _check_root_arrays(store, n, rep)
    for L in store.layers:
        _check_layer_arrays(store, L, n, rep)
        rep.corrupt += _coordinate_problems(store, L, n)
        rep.corrupt += _overview_problems(store, L, n)
    if rep.corrupt:
        return rep
    ids = store.chip_ids()
    if any(not c for c in ids):
        rep.incomplete.append(f"{sum(1 for c in ids if not c)} chip slot(s) allocated but not registered")
    try:
        commits = store.read_commits()
    except StoreError as e:
        rep.corrupt.append(str(e))
        return rep
    _check_completeness(store, ids, commits, rep)
    _check_consolidated(store, ids, commits, rep)
    if not store.exists("index.parquet"):
        rep.incomplete.append("index.parquet missing (run build again)")
    else:
        _check_index(store, ids, commits, rep)
    partial = [] if store.remote else interrupted_writes(store.path)
    if partial:
        rep.incomplete.append(f"{len(partial)} partial file(s) from an interrupted write")
    if checksums and not rep.corrupt:
        if progress is not None:
            progress.start(n * len(store.layers))
        reader = ChipReader(store)
        for L in store.layers:
            for start in range(0, n, store.chips_per_shard):  # one shard at a time: bounded memory
                _check_shard(store, reader, L, ids, commits, start, rep, progress)
    return rep


def _check_root_arrays(store: Store, n: int, rep: ValidationReport) -> None:
    """The root's per-chip arrays hold one entry per registered chip."""
    for name in ("split", "chip_xmin", "chip_ymax"):
        if store.root[name].shape[0] < n:
            rep.corrupt.append(f"root/{name} has shape {store.root[name].shape}, expected ({n},)")
        elif store.root[name].shape[0] > n:
            rep.incomplete.append(f"root/{name}: chip slots allocated, not registered (run build again)")


def _check_layer_arrays(store: Store, L: Layer, n: int, rep: ValidationReport) -> None:
    """One group's arrays: readable metadata, shapes, one chip per chunk, the recipe's shards, dtype."""
    try:
        g = store.root[L.group]
    except Exception as e:  # a missing or unreadable group zarr.json
        rep.corrupt.append(f"group {L.group}: {first_line(e, 160)}")
        return
    px = L.pixels(store.chip_size_m)
    want = (n, px, px) if L.is_label else (n, len(L.bands), px, px)
    arrays = {}
    for name in (L.data_name, "valid", "status", "datetime", "item_ids", "valid_fraction", "chip_id"):
        try:
            arrays[name] = g[name]
        except Exception as e:  # truncated or garbage zarr.json: zarr raises JSON or key errors
            rep.corrupt.append(f"{L.group}/{name}: array metadata unreadable ({first_line(e, 120)})")
    for name, shape in ((L.data_name, want), ("valid", (n, px, px))):
        if name not in arrays:
            continue
        a = arrays[name]
        if a.shape[1:] != shape[1:] or a.shape[0] < n:
            rep.corrupt.append(f"{L.group}/{name} shape {a.shape}, expected {shape}")
        elif a.shape[0] > n:  # a build was stopped while registering chips
            rep.incomplete.append(f"{L.group}/{name}: {a.shape[0] - n} chip slot(s) allocated, not registered")
        if a.chunks != (1, *shape[1:]):
            rep.corrupt.append(f"{L.group}/{name} chunks {a.chunks}, expected one chip per chunk")
        if a.shards is None or a.shards[0] != store.chips_per_shard:
            rep.corrupt.append(f"{L.group}/{name} shards {a.shards}, expected {store.chips_per_shard} chips per shard")
    if L.data_name in arrays and str(arrays[L.data_name].dtype) != L.dtype:
        rep.corrupt.append(f"{L.group}/{L.data_name} dtype {arrays[L.data_name].dtype}, expected {L.dtype}")
    for name in ("status", "datetime", "item_ids", "valid_fraction", "chip_id"):
        if name in arrays and arrays[name].shape[0] < n:
            rep.corrupt.append(f"{L.group}/{name} shape {arrays[name].shape}, expected ({n},)")


def _status(commits: Commits, cid: str, group: str) -> Status:
    rec = commits.get(cid)
    return Status.PENDING if rec is None else rec.status(group)


def _check_completeness(store: Store, ids: list[str], commits: Commits, rep: ValidationReport) -> None:
    """Every registered chip has a done mark for every group; failed ones are counted."""
    for L in store.layers:
        states = [_status(commits, cid, L.group) for cid in ids]
        if (k := states.count(Status.PENDING)):
            rep.incomplete.append(f"{L.group}: {k} chip(s) not built (run build again to complete)")
        if (k := states.count(Status.FAILED)):
            rep.incomplete.append(f"{L.group}: {k} chip(s) failed (build --retry-failed)")


def _check_consolidated(store: Store, ids: list[str], commits: Commits, rep: ValidationReport) -> None:
    """The consolidated status arrays agree with the done marks."""
    n = len(ids)
    for L in store.layers:
        status = store.root[L.group]["status"][:n] if n else []
        for i, cid in enumerate(ids):
            st = _status(commits, cid, L.group)
            if st is not Status.PENDING and Status.from_code(status[i]) is not st:
                rep.incomplete.append(f"{L.group}: metadata not consolidated for {cid} (run build again)")
                break


def _check_shard(store: Store, reader: ChipReader, L: Layer, ids: list[str], commits: Commits, start: int,
                 rep: ValidationReport, progress: Progress | None) -> None:
    """Decode one shard of ``L`` (and its overview levels) and check every done chip's checksums."""
    stop = min(start + store.chips_per_shard, len(ids))
    g = store.root[L.group]
    built = [i for i in range(start, stop) if _status(commits, ids[i], L.group).written]
    shard = reader.shard_file(L.group, L.data_name, start)
    if built and not (store.exists(shard) and store.exists(reader.shard_file(L.group, "valid", start))):
        rep.corrupt.append(f"{L.group}: shard file {shard} (or its valid mask) is missing; it holds "
                           f"{len(built)} built chip(s) from {ids[built[0]]} (rebuild: build --retry-failed "
                           "after deleting their done mark, or build a new store)")
        return
    try:
        data, valid = g[L.data_name][start:stop], g["valid"][start:stop]
    except Exception as e:  # damaged bytes: a codec error, never a crash of validate
        rep.corrupt.append(f"{L.group}: shard {shard} cannot be decoded ({first_line(e, 120)}); it holds "
                           f"chips {ids[start]}..{ids[stop - 1]}")
        return
    levels = {}
    for f in L.overviews:
        og = store.root[overview_path(L.group, f)]
        try:
            levels[str(f)] = (og[L.data_name][start:stop], og["valid"][start:stop])
        except Exception as e:  # damaged bytes, as above
            rep.corrupt.append(f"{L.group}: overview {f} of chips {ids[start]}..{ids[stop - 1]} cannot "
                               f"be decoded ({first_line(e, 120)})")
    for i in range(start, stop):
        if progress is not None:
            progress.advance()
        chip = commits.get(ids[i])
        rec = chip.layers.get(L.group) if chip is not None else None
        if rec is None or not rec.status.done or rec.checksum is None:
            continue
        d = data[i - start][None] if L.is_label else data[i - start]
        if chip_checksum(d, valid[i - start]) != rec.checksum:
            rep.corrupt.append(f"{L.group}: checksum mismatch for chip {ids[i]}")
        for level, want in rec.overview_checksums.items():
            got = levels.get(level)
            if got is not None and chip_checksum(got[0][i - start], got[1][i - start]) != want:
                rep.corrupt.append(f"{L.group}: overview {level} checksum mismatch for chip {ids[i]}")
        rep.checked_chips += 1


def _overview_problems(store: Store, L: Layer, n: int) -> list[str]:
    """Each overview level of the recipe must exist with the shape its factor gives."""
    out = []
    px = L.pixels(store.chip_size_m)
    for f in L.overviews:
        path = overview_path(L.group, f)
        want = {L.data_name: (n, len(L.bands), px // f, px // f), "valid": (n, px // f, px // f)}
        for name, shape in want.items():
            try:
                a = store.root[f"{path}/{name}"]
            except Exception as e:  # missing or unreadable metadata
                out.append(f"{path}/{name}: array missing or unreadable ({first_line(e, 120)})")
                continue
            if a.shape[1:] != shape[1:] or a.shape[0] < n:
                out.append(f"{path}/{name} shape {a.shape}, expected {shape}")
    return out


def _check_index(store: Store, ids: list[str], commits: Commits, rep: ValidationReport) -> None:
    """The GeoParquet index must be readable and agree with the arrays and the done marks."""
    try:
        idx = store.index(checked=False)
    except Exception as e:  # garbage bytes: pyarrow raises its own error types
        rep.corrupt.append(f"index.parquet unreadable ({first_line(e, 120)}): run build again to rewrite it")
        return
    need = {"chip_id", "chip_index", "split", "geometry"}
    if not need <= set(idx.columns):
        rep.corrupt.append(f"index.parquet lacks columns {sorted(need - set(idx.columns))}")
        return
    if store.appending(idx, ids):
        rep.incomplete.append(f"index.parquet lists {len(idx)} of {len(ids)} chips: an append was interrupted or is "
                              "running (run the build again to finish it)")
        ids = ids[: len(idx)]
    if len(idx) != len(ids):
        rep.corrupt.append(f"index.parquet has {len(idx)} rows; the store has {len(ids)} chips")
        return
    if [int(v) for v in idx["chip_index"]] != list(range(len(ids))) or list(idx["chip_id"]) != ids:
        bad = next(i for i, (a, b) in enumerate(zip(idx["chip_id"], ids, strict=True)) if a != b
                   or int(idx["chip_index"].iloc[i]) != i) if len(ids) else 0
        rep.corrupt.append(f"index.parquet does not match the arrays: row {bad} says chip "
                           f"{idx['chip_id'].iloc[bad]} at index {int(idx['chip_index'].iloc[bad])}, the arrays hold "
                           f"{ids[bad]} there (run build again to rewrite the index)")
        return
    for L in store.layers:
        col = field_column("status", L.group)
        if col not in idx.columns:
            rep.corrupt.append(f"index.parquet lacks column {col}")
            continue
        for cid, st in zip(idx["chip_id"], idx[col], strict=True):
            want = _status(commits, cid, L.group).value
            if st != want:
                rep.corrupt.append(f"index.parquet says {L.group} of {cid} is {st}; its done mark says {want} "
                                   "(run build again to rewrite the index)")
                break
