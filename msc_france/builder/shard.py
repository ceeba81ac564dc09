"""One shard task: what a worker does with a shard's chips. Every chip of every sensor is read from
its ranked candidates (``first-valid`` or ``clearest``), co-registered against the reference
sensor, packed, and the shard's arrays, overview levels and done mark written (each atomically).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import rasterio
from affine import Affine

from msc_france.builder.coreg import CoregRule, area_mean, luminance, measure
from msc_france.builder.pool import task_pool
from msc_france.builder.read import ChipRead, read_candidate
from msc_france.builder.warp import clear_http_cache, gdal_env
from msc_france.config import Recipe, SensorSpec
from msc_france.errors import BadInputError, SourceError
from msc_france.grid import Chip, PixelGrid
from msc_france.products import SourceItem
from msc_france.store import Layer, Store
from msc_france.store.overviews import shard_overview
from msc_france.store.records import ChipRecord, LayerRecord, ShardCommit, Status
from msc_france.store.schema import chip_checksum, reference_layer


@dataclass(frozen=True)
class ChipJob:
    """One chip to build: its store index and, per layer, the ranked candidates.

    A candidate is the parsed items of one acquisition, or the one-line reason its items could
    not be parsed (that candidate then fails for this chip only).
    """

    chip_id: str
    index: int
    candidates: dict[str, list[tuple[SourceItem, ...] | str]]


@dataclass(frozen=True)
class ShardTask:
    """All chips of one shard that need building."""

    shard: int
    start: int
    stop: int
    jobs: tuple[ChipJob, ...]


@dataclass(frozen=True)
class LayerRule:
    """What a task needs to know about one layer."""

    layer: Layer
    spec: SensorSpec
    min_valid_fraction: float
    selection: str = "first-valid"  # or "clearest": every candidate read, the most valid kept


def _build_layer(rule: LayerRule, chip: Chip, cands: list[tuple[SourceItem, ...] | str],
                 policy: str, shift_m: tuple[float, float] = (0.0, 0.0)) -> tuple[ChipRead | None, LayerRecord]:
    """Try the candidates in rank order; keep the first that is valid enough, else the best.

    ``shift_m`` (co-registration correction): the sensor shows ground features that many metres
    east and north of where they are, so the chip is read from a grid displaced by it.
    """
    grid = chip.pixel_grid(rule.layer.gsd)
    if shift_m != (0.0, 0.0):
        t = grid.transform
        grid = PixelGrid(grid.crs, Affine(t.a, t.b, t.c + shift_m[0], t.d, t.e, t.f + shift_m[1]), grid.height,
                         grid.width)
    if not cands:
        return None, LayerRecord(Status.NODATA, reason="no item covers this chip")
    best: ChipRead | None = None
    best_items: tuple[SourceItem, ...] = ()
    errors: list[str] = []
    for items in cands:
        if isinstance(items, str):
            errors.append(items)
            continue
        try:
            r = read_candidate(rule.spec, list(items), grid)  # each item signed by its own provider
        except SourceError as e:
            errors.append(str(e))
            continue
        if best is None or r.valid_fraction > best.valid_fraction:
            best, best_items = r, items
        if rule.selection == "first-valid" and r.valid_fraction >= rule.min_valid_fraction:
            break
    if best is None:
        return None, LayerRecord.failed(errors[-1] if errors else "no readable candidate")
    below = f"valid fraction {best.valid_fraction:.2f} < {rule.min_valid_fraction}"
    if best.valid_fraction >= rule.min_valid_fraction:
        status, reason = Status.OK, None
    elif policy == "drop":
        status, reason = Status.DROPPED, below
    else:
        status, reason = Status.FLAGGED, below
    rec = LayerRecord(
        status, reason=reason, item_ids=tuple(best.item_ids), datetime=best.datetime,
        harmonization=best.harmonization, cloud_fraction=best.cloud_fraction, provider=best.providers,
        date_rule=best.date_rule,
        scene_cloud_cover=_scene_cloud_cover(best_items),
        valid_fraction=round(best.valid_fraction, 6), covered_fraction=round(best.covered_fraction, 6),
        clipped=best.clipped)
    if status is Status.DROPPED:
        return None, rec
    return best, replace(rec, skipped_candidates=tuple(errors), checksum=best.checksum(),
                         stats=None if rule.layer.is_label else best.stats(),
                         class_counts=best.class_counts() if rule.layer.is_label else None)


def _scene_cloud_cover(items: tuple[SourceItem, ...]) -> float | None:
    """The scenes' stated cloud cover (percent; the mean over a mosaic's items), None when unstated."""
    stated = [it.cloud_cover for it in items if it.cloud_cover is not None]
    return round(sum(stated) / len(stated), 3) if stated else None


def build_shard(store_path: str, task: ShardTask, rules: list[LayerRule], chip_size_m: int, policy: str,
                tick: Callable[[], None] | None = None, coreg: CoregRule | None = None) -> dict[str, ChipRecord]:
    """Build, write and commit one shard; returns the chip records it committed.

    ``tick`` (local threads only) is called after each chip of each sensor is read. With ``coreg``,
    every built chip's sensors are measured against the reference sensor (:mod:`.coreg`).
    """
    store = Store.open(store_path, mode="r+")
    worker = _worker_name()
    existing = store.read_commit(task.shard, tolerant=True)
    rebuild = {j.chip_id for j in task.jobs}
    keep = {cid: rec for cid, rec in existing.items() if cid not in rebuild}
    clear_http_cache()  # a long-lived worker must not remember an earlier task's failed opens
    if coreg is not None:  # the reference first: the others are measured (and corrected) against it
        rules = sorted(rules, key=lambda r: r.layer.group != coreg.reference)
    with task_pool():  # each source file opened once for the shard's chips (builder/pool.py)
        layers = _build_layers(store, task, rules, chip_size_m, policy, tick, coreg, keep)
    records = {j.chip_id: ChipRecord(j.index, worker, layers[j.chip_id]) for j in task.jobs}
    store.write_commit(ShardCommit(task.shard, {**keep, **records}))  # the done mark, after the data
    return records


def _build_layers(store: Store, task: ShardTask, rules: list[LayerRule], chip_size_m: int, policy: str,
                  tick: Callable[[], None] | None, coreg: CoregRule | None,
                  keep: dict[str, ChipRecord]) -> dict[str, dict[str, LayerRecord]]:
    """Every layer of the shard's chips read, written (with its overview levels) and recorded."""
    layers: dict[str, dict[str, LayerRecord]] = {j.chip_id: {} for j in task.jobs}
    views: dict[str, dict[str | float, np.ndarray]] = {j.chip_id: {} for j in task.jobs}  # the reference's
    n = task.stop - task.start
    for rule in rules:
        with rasterio.Env(**gdal_env(rule.spec.source.gdal)):
            L = rule.layer
            # Chips of this shard that are not rebuilt keep their bytes: read them back so the
            # shard is rewritten whole, in one atomic write.
            if keep:
                data, valid = store.read_shard(L.group, task.shard)
            else:
                px = L.pixels(chip_size_m)
                data = np.zeros((n, px, px) if L.is_label else (n, len(L.bands), px, px), L.dtype)
                valid = np.zeros((n, px, px), np.uint8)
            for job in task.jobs:
                i = job.index - task.start
                chip = Chip.from_id(job.chip_id)
                try:
                    res, rec = _build_layer(rule, chip, job.candidates.get(L.group, []), policy)
                    if coreg is not None and res is not None:
                        res, rec = _coregister(coreg, rule, chip, job, policy, res, rec, views[job.chip_id])
                except Exception as e:  # a bug or an unexpected library error: fail this chip only
                    res, rec = None, LayerRecord.failed(f"{type(e).__name__}: {e}"[:300], traceback.format_exc(limit=3))
                if res is not None:
                    data[i] = res.data[0] if L.is_label else res.data
                    valid[i] = res.valid
                else:
                    data[i] = 0
                    valid[i] = 0
                layers[job.chip_id][L.group] = rec
                if tick is not None:
                    tick()
            store.write_shard(L.group, task.shard, data, valid)
            for f in L.overviews:  # derived from the shard just written (kept chips included)
                og_data, og_valid = shard_overview(data, valid, f)
                store.write_shard(L.group, task.shard, og_data, og_valid, factor=f)
                for job in task.jobs:
                    rec = layers[job.chip_id][L.group]
                    if rec.checksum is not None:  # validate checks each level as it checks full resolution
                        i = job.index - task.start
                        layers[job.chip_id][L.group] = rec.with_overview(f, chip_checksum(og_data[i], og_valid[i]))
    return layers


def _coregister(rule: CoregRule, layer_rule: LayerRule, chip: Chip, job: ChipJob, policy: str, res: ChipRead,
                rec: LayerRecord, views: dict[str | float, np.ndarray]) -> tuple[ChipRead, LayerRecord]:
    """The reference's views kept, or this sensor measured against them: its shift recorded, the chip
    flagged when the rule says so, and with ``correct`` read again from a grid displaced by the shift
    (the residual is then what the record's shift says; the applied one is recorded too).
    """
    L = layer_rule.layer
    data, valid = (res.data[0] if L.is_label else res.data), res.valid
    if L.group == rule.reference:
        lum = luminance(data, valid)
        for g in {g for _, g in rule.moving}:
            views[g] = area_mean(lum, L.gsd, g)
        return res, rec
    moving = dict(rule.moving)
    if L.group not in moving or moving[L.group] not in views or not rec.status.written:
        return res, rec
    gsd = moving[L.group]
    s = measure(views[gsd], luminance(data, valid), gsd)
    if s is None:
        return res, rec
    applied = None
    if rule.correct and s.quality >= rule.min_quality and np.hypot(s.x_m, s.y_m) > 0.05 * gsd:
        res2, rec2 = _build_layer(layer_rule, chip, job.candidates.get(L.group, []), policy, (s.x_m, s.y_m))
        if res2 is not None and rec2.status.written:
            again = measure(views[gsd], luminance(res2.data[0] if L.is_label else res2.data, res2.valid), gsd)
            if again is not None:
                res, rec, applied, s = res2, rec2, (s.x_m, s.y_m), again
    rec = replace(rec, shift_x_m=s.x_m, shift_y_m=s.y_m, coreg_quality=s.quality, coreg_overlap=s.overlap,
                  applied_shift_x_m=None if applied is None else applied[0],
                  applied_shift_y_m=None if applied is None else applied[1])
    why = rule.flag(s)
    if why is not None:
        rec = replace(rec, status=Status.FLAGGED, reason=f"{rec.reason}; {why}" if rec.reason else why)
    return res, rec


def coreg_rule(recipe: Recipe, layers: list[Layer]) -> CoregRule | None:
    """The recipe's co-registration rule for ``layers`` (None when off or with one sensor).

    Raises:
        BadInputError: a reference sensor the recipe does not build.
    """
    c = recipe.coregistration
    sensors = [L for L in layers if not L.is_label]
    if not c.measure or len(sensors) < 2:
        return None
    if c.reference is not None and c.reference not in {L.group for L in sensors}:
        raise BadInputError(f"coregistration.reference '{c.reference}' is not a sensor of the recipe "
                            f"({', '.join(L.group for L in sensors)})")
    ref = reference_layer(sensors, c.reference)
    assert ref is not None  # two sensors at least
    return CoregRule(ref.group, ref.gsd, tuple((L.group, L.gsd) for L in sensors if L.group != ref.group),
                     c.max_misregistration_m, c.min_quality, c.correct)


def _worker_name() -> str:
    """The dask worker running this task (recorded in done marks: where was each chip built)."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "local"
