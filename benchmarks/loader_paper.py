"""The loader of the paper preset (pipelines/pretrain-xstars-paper.yaml: 224 px, three sensors, RGB,
no in-memory cache, 2 workers with one torch thread each on this 2-core machine) over a store built
at the default recipe's chip size (1,920 m: Sentinel-2 192 px, Landsat-8 64 px, aerial 1,280 px with
its 256 px overview level), read cold: every file of the store is evicted from the page cache
(``posix_fadvise(DONTNEED)``) before each epoch, as a store larger than the page cache would be.

Against the decode ceiling of the chunks it reads (each sample's chunks, zstd-decoded from memory,
x workers), with the rest profiled: the same epoch with the store warm, and over an empty dataset.
The store is built from the demo world once and kept in the cache (``bench/paper-store.zarr``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import ROOT, median_time, row

WORKERS = 2


def paper_store(quick: bool, recipe: str = "demo", region: str = "demo") -> Path:
    """``region`` built with ``recipe`` at 1,920 m chips and an aerial overview at factor 5 (kept in
    the cache, one store per recipe and region).
    """
    import hashlib

    from msc_france.cli import main
    from msc_france.config import resolve_recipe_path
    from msc_france.paths import cache_dir

    path = resolve_recipe_path(recipe)
    key = hashlib.sha256(f"{path.read_text()}|{region}|{quick}".encode()).hexdigest()[:12]
    out = cache_dir() / "bench" / f"paper-store-{key}.zarr"
    if (out / "index.parquet").exists():
        return out
    rec = yaml.safe_load(path.read_text())
    rec.update(name="paper-size", chip_size_m=1920, chips_per_shard=16)
    rec["sensors"]["aerial"]["overviews"] = [5]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "r.yaml").write_text(yaml.safe_dump(rec))
        code = main(["build", "--region", region, "--recipe", str(Path(tmp) / "r.yaml"), "--out", str(out),
                     "--quiet"])
    if code != 0:
        raise RuntimeError(f"building the paper-size store failed ({code})")
    return out


def evict(store: Path) -> int:
    """Drop every file of ``store`` from the page cache; returns the bytes on disk."""
    total = 0
    for p in store.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            total += p.stat().st_size
    return total


def bench_loader_paper(quick: bool, reps: int, recipe: str = "demo",
                       region: str = "demo") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows: the cold loader vs its decode ceiling (target >= 50 %), and the profile of the rest."""
    import torch
    from numcodecs import Zstd
    from torch.utils.data import DataLoader

    from msc_france.data import MSCFranceDataset, collate
    from msc_france.store.overviews import overview_path
    from msc_france.xstars.distributed import one_thread

    cfg = yaml.safe_load((ROOT / "pipelines" / "pretrain-xstars-paper.yaml").read_text())["data"]
    store = paper_store(quick, recipe, region)
    ds = MSCFranceDataset(store, sensors=cfg["sensors"], split=None, bands=cfg["bands"], size=cfg["size"],
                          tiles=cfg["tiles"], cache=False)
    n = len(ds)

    def epoch(cold: bool) -> None:
        if cold:
            evict(store)
        loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=WORKERS, collate_fn=collate,
                            worker_init_fn=one_thread, generator=torch.Generator().manual_seed(0))
        for _ in loader:
            pass

    codec = Zstd(level=3)
    root = ds._open().root
    chunks = []
    for ci in ds.chip_index:
        for s in ds.sensors:
            g = root[s if ds.levels[s] == 1 else overview_path(s, ds.levels[s])]
            for a in (g["image"][ci], g["valid"][ci]):
                chunks.append((codec.encode(np.ascontiguousarray(a)), a.dtype, a.shape))

    def decode() -> None:
        for buf, dtype, shape in chunks:
            np.frombuffer(codec.decode(buf), dtype=dtype).reshape(shape)

    class _Empty(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.zeros(1)

    def empty() -> None:
        for _ in DataLoader(_Empty(), batch_size=8, num_workers=WORKERS, worker_init_fn=one_thread):
            pass

    on_disk = evict(store)
    epoch(False)  # warm-up: imports and the first worker start
    t_cold = median_time(lambda: epoch(True), reps)
    t_warm = median_time(lambda: epoch(False), reps)
    t_dec, t_empty = median_time(decode, reps), median_time(empty, reps)
    sps, ceiling = n / t_cold, WORKERS * n / t_dec
    levels = ", ".join(f"{s} x{f}" for s, f in ds.levels.items() if f > 1) or "none"
    what = (f"{n} samples of 1,920 m at {cfg['size']} px, 3 sensors, RGB, no cache, {WORKERS} workers x 1 torch "
            f"thread, batch 8; overview levels read: {levels}; store {on_disk / 1e6:.0f} MB, evicted before each epoch")
    rows = [
        row("loader at the paper's size (224 px, cold store) vs decode ceiling", sps, "samples/s", ceiling,
            f"zstd decode of the chunks it reads from memory x {WORKERS} workers", ">= 50% of ceiling",
            met=sps / ceiling >= 0.5, note=what),
        row("loader at the paper's size, warm page cache", n / t_warm, "samples/s", sps, "the cold epoch",
            "report only", note="the same epoch with the store's files in the page cache: what reading from disk costs"),
        row("loader at the paper's size, fresh workers doing no work", n / t_empty, "samples/s", ceiling,
            "the decode ceiling above", "report only",
            note=f"{n} empty samples, {WORKERS} fresh workers: process start and batch transfer only"),
    ]
    return rows, {"samples": n, "cold_s": t_cold, "warm_s": t_warm, "decode_s": t_dec, "empty_s": t_empty,
                  "store_bytes": on_disk, "levels": ds.levels}


__all__ = ["bench_loader_paper", "evict", "paper_store"]
