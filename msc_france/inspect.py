"""Looking at a store: ``info`` (a summary) and ``validate`` (schema, completeness, checksums)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from msc_france.store import DONE, FORMAT_VERSION, STATUS, STATUS_NAMES, Store


def info(store: Store) -> dict[str, Any]:
    """A summary of the store: format, chips, regions, splits, per-layer status and statistics."""
    m = store.meta
    out: dict[str, Any] = {
        "path": store.url, "format_version": m["format_version"], "recipe": m["recipe"]["name"],
        "chip_size_m": m["chip_size_m"], "chips_per_shard": m["chips_per_shard"], "n_chips": store.n_chips,
        "regions": m["regions"], "complete": m.get("complete", False), "layers": {},
    }
    n = store.n_chips
    splits = [str(s) for s in store.root["split"][:n]] if n else []
    out["splits"] = {s: splits.count(s) for s in ("train", "val", "test")}
    for L in store.layers:
        g = store.root[L.group]
        status = g["status"][:n] if n else np.zeros(0, np.uint8)
        vf = g["valid_fraction"][:n] if n else np.zeros(0)
        out["layers"][L.group] = {
            "sensor": L.sensor, "gsd": L.gsd, "bands": list(L.bands), "dtype": L.dtype,
            "chip_pixels": L.pixels(store.chip_size_m),
            "status": {k: int((status == v).sum()) for k, v in STATUS.items() if (status == v).any()},
            "mean_valid_fraction": float(np.nanmean(vf)) if n and np.isfinite(vf).any() else None,
            "stats": g.attrs.get("stats"),
        }
    return out


@dataclass
class ValidationReport:
    """Problems found by :func:`validate`: ``corrupt`` ones mean data is wrong, ``incomplete`` ones
    mean a build has work left."""

    corrupt: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    checked_chips: int = 0

    @property
    def ok(self) -> bool:
        """True when the store is complete and consistent."""
        return not self.corrupt and not self.incomplete


def validate(store: Store, checksums: bool = True) -> ValidationReport:
    """Check schema, shapes, chunking, completeness and (optionally) every chip's checksum."""
    from msc_france.build.read import ChipRead  # checksum definition lives with the reader

    rep = ValidationReport()
    m = store.meta
    if int(m["format_version"]) != FORMAT_VERSION:
        rep.corrupt.append(f"format version {m['format_version']} (expected {FORMAT_VERSION})")
    n = store.n_chips
    s = store.chips_per_shard
    for name in ("split", "chip_xmin", "chip_ymax"):
        if store.root[name].shape[0] < n:
            rep.corrupt.append(f"root/{name} has shape {store.root[name].shape}, expected ({n},)")
        elif store.root[name].shape[0] > n:
            rep.incomplete.append(f"root/{name}: chip slots allocated, not registered (run build again)")
    for L in store.layers:
        if L.group not in store.root:
            rep.corrupt.append(f"missing group {L.group}")
            continue
        g = store.root[L.group]
        px = L.pixels(store.chip_size_m)
        want = (n, px, px) if L.is_label else (n, len(L.bands), px, px)
        for name, shape in ((L.data_name, want), ("valid", (n, px, px))):
            if name not in g:
                rep.corrupt.append(f"{L.group}/{name} missing")
                continue
            a = g[name]
            if a.shape[1:] != shape[1:] or a.shape[0] < n:
                rep.corrupt.append(f"{L.group}/{name} shape {a.shape}, expected {shape}")
            elif a.shape[0] > n:  # a build was stopped while registering chips
                rep.incomplete.append(f"{L.group}/{name}: {a.shape[0] - n} chip slot(s) allocated, not registered")
            if a.chunks != (1, *shape[1:]):
                rep.corrupt.append(f"{L.group}/{name} chunks {a.chunks}, expected one chip per chunk")
            if a.shards is None or a.shards[0] != s:
                rep.corrupt.append(f"{L.group}/{name} shards {a.shards}, expected {s} chips per shard")
        if str(g[L.data_name].dtype) != L.dtype:
            rep.corrupt.append(f"{L.group}/{L.data_name} dtype {g[L.data_name].dtype}, expected {L.dtype}")
        for name in ("status", "datetime", "item_ids", "valid_fraction", "chip_id"):
            if g[name].shape[0] < n:
                rep.corrupt.append(f"{L.group}/{name} shape {g[name].shape}, expected ({n},)")
    if rep.corrupt:
        return rep
    ids = store.chip_ids()
    if any(not c for c in ids):
        rep.incomplete.append(f"{sum(1 for c in ids if not c)} chip slot(s) allocated but not registered")
    commits = store.read_commits()
    pending: dict[str, int] = {}
    failed: dict[str, int] = {}
    for cid in ids:
        rec = commits.get(cid, {}).get("sensors", {})
        for L in store.layers:
            st = rec.get(L.group, {}).get("status")
            if st is None:
                pending[L.group] = pending.get(L.group, 0) + 1
            elif st == "failed":
                failed[L.group] = failed.get(L.group, 0) + 1
    for grp, k in pending.items():
        rep.incomplete.append(f"{grp}: {k} chip(s) not built (run build again to complete)")
    for grp, k in failed.items():
        rep.incomplete.append(f"{grp}: {k} chip(s) failed (build --retry-failed)")
    # The consolidated metadata must agree with the done marks.
    for L in store.layers:
        status = store.root[L.group]["status"][:n] if n else []
        for i, cid in enumerate(ids):
            st = commits.get(cid, {}).get("sensors", {}).get(L.group, {}).get("status")
            if st is not None and STATUS_NAMES[int(status[i])] != st:
                rep.incomplete.append(f"{L.group}: metadata not consolidated for {cid} (run build again)")
                break
    if not store.exists("index.parquet"):
        rep.incomplete.append("index.parquet missing (run build again)")
    partial = [p for p in store.fs.find(store.fs_root) if p.endswith(".partial")]
    if partial:
        rep.incomplete.append(f"{len(partial)} partial file(s) from an interrupted write")
    if checksums and not rep.corrupt:
        for L in store.layers:
            g = store.root[L.group]
            data_arr, valid_arr = g[L.data_name], g["valid"]
            for start in range(0, n, s):  # one shard at a time: bounded memory
                stop = min(start + s, n)
                data, valid = data_arr[start:stop], valid_arr[start:stop]
                for i in range(start, stop):
                    rec = commits.get(ids[i], {}).get("sensors", {}).get(L.group)
                    if not rec or rec.get("status") not in DONE or "checksum" not in rec:
                        continue
                    d = data[i - start][None] if L.is_label else data[i - start]
                    cr = ChipRead(d, valid[i - start], [], 0, "", 0, None, 0)
                    if cr.checksum() != rec["checksum"]:
                        rep.corrupt.append(f"{L.group}: checksum mismatch for chip {ids[i]}")
                    rep.checked_chips += 1
    return rep
