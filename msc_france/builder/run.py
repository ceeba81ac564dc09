"""The build: a plan -> shard tasks on dask -> store, resumable and idempotent.

The unit of work is one shard (``chips_per_shard`` consecutive chips of the store). A task reads
and warps every chip and sensor of its shard, writes each array's shard in one atomic write,
then writes the shard's done mark. No two tasks touch the same shard file, which makes the
threaded scheduler, a process LocalCluster and a remote dask.distributed cluster equally correct.
At most ``2 x threads`` tasks are in flight, so memory does not grow with the region.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from msc_france.builder.coreg import CoregRule, area_mean, luminance, measure
from msc_france.builder.read import ChipRead, read_candidate
from msc_france.builder.scheduler import Completed, ThreadClient, check_scheduler, dask_client
from msc_france.builder.warp import clear_http_cache, gdal_env
from msc_france.config import Catalog, Recipe, SensorSpec
from msc_france.errors import BadInputError, SourceError, first_line
from msc_france.grid import Chip, PixelGrid, pixels_per_chip
from msc_france.plan import Plan
from msc_france.products import SourceItem, rules_for
from msc_france.progress import Progress
from msc_france.sources.signing import make_signer
from msc_france.store import LABELS_GROUP, Layer, Store, StoreSchema
from msc_france.store.overviews import shard_overview
from msc_france.store.records import ChipRecord, Commits, LayerRecord, ShardCommit, Status
from msc_france.store.schema import chip_checksum, reference_layer

log = logging.getLogger(__name__)


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


@dataclass
class BuildSummary:
    """What a build did."""

    planned: int = 0
    built: int = 0
    skipped: int = 0
    flagged: int = 0
    dropped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    complete: bool = False

    @property
    def chips_per_s(self) -> float:
        """Build throughput (chips built per second of wall time)."""
        return self.built / self.elapsed_s if self.elapsed_s > 0 else 0.0


# --------------------------------------------------------------------------- the task


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
    signer = make_signer(rule.spec.source.signing)
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
            r = read_candidate(rule.spec, list(items), grid, signer)
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
        harmonization=best.harmonization, cloud_fraction=best.cloud_fraction,
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
    layers: dict[str, dict[str, LayerRecord]] = {j.chip_id: {} for j in task.jobs}
    views: dict[str, dict[str | float, np.ndarray]] = {j.chip_id: {} for j in task.jobs}  # the reference's
    n = task.stop - task.start
    clear_http_cache()  # a long-lived worker must not remember an earlier task's failed opens
    if coreg is not None:  # the reference first: the others are measured (and corrected) against it
        rules = sorted(rules, key=lambda r: r.layer.group != coreg.reference)
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
    records = {j.chip_id: ChipRecord(j.index, worker, layers[j.chip_id]) for j in task.jobs}
    store.write_commit(ShardCommit(task.shard, {**keep, **records}))  # the done mark, after the data
    return records


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


def plan_tasks(plan: Plan, index_of: dict[str, int], commits: Commits, chips_per_shard: int,
               group_sensor: dict[str, str], retry_failed: bool, n_chips: int) -> tuple[list[ShardTask], int]:
    """Shard tasks for every planned chip that is not done; returns (tasks, chips skipped).

    ``group_sensor`` maps each store group to the sensor it holds.
    """
    by_shard: dict[int, list[ChipJob]] = {}
    skipped = 0
    layer_groups = list(group_sensor)
    for chip in plan.chips:
        rec = commits.get(chip.id, ChipRecord())
        states = [rec.status(g) for g in layer_groups]
        done = all(s.done for s in states) or (
            not retry_failed and Status.PENDING not in states and Status.FAILED in states
        )
        if done:
            skipped += 1
            continue
        idx = index_of[chip.id]
        by_shard.setdefault(idx // chips_per_shard, []).append(ChipJob(chip.id, idx, {}))
    tasks = []
    for shard, jobs in sorted(by_shard.items()):
        start = shard * chips_per_shard
        tasks.append(ShardTask(shard, start, min(start + chips_per_shard, n_chips), tuple(jobs)))
    return tasks, skipped


def with_candidates(task: ShardTask, plan: Plan, group_sensor: dict[str, str],
                    memo: dict[tuple[str, str], SourceItem | str]) -> ShardTask:
    """Attach the ranked candidates, parsed by each sensor's product rules, just before submission.

    Done lazily so that only the tasks in flight hold parsed items, whatever the region size;
    each item is parsed once per sensor (``memo``).
    """
    def parsed(sensor: str, it: Any) -> SourceItem | str:
        key = (sensor, it.id)
        if key not in memo:
            spec = plan.catalog.sensor(sensor)
            try:
                memo[key] = rules_for(spec.product).parse(spec, it.to_dict(transform_hrefs=False))
            except SourceError as e:
                memo[key] = str(e)
        return memo[key]

    def candidate(sensor: str, items: tuple[Any, ...]) -> tuple[SourceItem, ...] | str:
        out = [parsed(sensor, it) for it in items]
        bad = [p for p in out if isinstance(p, str)]
        return bad[0] if bad else tuple(p for p in out if not isinstance(p, str))

    jobs = tuple(
        ChipJob(j.chip_id, j.index, {g: [candidate(s, c.items) for c in plan.for_chip(j.chip_id, s)]
                                     for g, s in group_sensor.items()})
        for j in task.jobs
    )
    return ShardTask(task.shard, task.start, task.stop, jobs)


def store_schema(recipe: Recipe, specs: dict[str, SensorSpec], gsds: dict[str, float]) -> StoreSchema:
    """The store a recipe produces: reflectance sensors in recipe order, labels last."""
    layers = []
    for name, sr in recipe.sensors.items():
        px = pixels_per_chip(recipe.chip_size_m, gsds[name])
        for f in sr.overviews:
            if px % f:
                raise BadInputError(f"overview factor {f} of {name} does not divide its {px} px chip side "
                                    f"(chip {recipe.chip_size_m} m at {gsds[name]:g} m)")
        layers.append(Layer(name, name, gsds[name], tuple(specs[name].band_names), specs[name].dtype, False,
                            specs[name].scale, specs[name].offset, specs[name].units, tuple(sr.overviews)))
    classes = None
    if recipe.labels is not None:
        s = specs[recipe.labels.sensor]
        layers.append(Layer(LABELS_GROUP, s.name, gsds[s.name], ("class",), s.dtype, True, units="class"))
        classes = s.classes
    return StoreSchema(recipe.chip_size_m, recipe.chips_per_shard, tuple(layers), recipe.rules(), classes)


def run_build(
    plan: Plan,
    out: str | Path,
    workers: int = 2,
    scheduler: str | None = None,
    retry_failed: bool = False,
    progress: Progress | None = None,
) -> BuildSummary:
    """Execute ``plan`` into the store at ``out``.

    Args:
        plan: the plan (from :func:`msc_france.plan.make_plan`).
        out: store directory (created, or appended to).
        workers: local threads/processes.
        scheduler: see :func:`dask_client`.
        retry_failed: rebuild chips recorded as failed (by default a rerun only builds new chips).
        progress: told how many chips there are to build, then as they are built (per chip and
            sensor with local threads, per shard on a dask cluster).

    Raises:
        StoreError: the store is locked by another build, or unreadable.
        BadInputError: the store was built with another recipe geometry.
    """
    t0 = time.perf_counter()
    check_scheduler(scheduler)
    recipe: Recipe = plan.recipe
    catalog: Catalog = plan.catalog
    specs = {name: catalog.sensor(name) for name in plan.gsds}
    schema = store_schema(recipe, specs, plan.gsds)
    layers = list(schema.layers)
    store = Store.create_or_open(out, schema)
    summary = BuildSummary(planned=len(plan.chips))
    rules = []
    for L in layers:
        minv = 0.0 if L.is_label else recipe.sensors[L.sensor].min_valid_fraction
        sel = "first-valid" if L.is_label else recipe.sensors[L.sensor].selection
        rules.append(LayerRule(L, specs[L.sensor], minv, sel))
    with store.lock():
        index_of = store.register(plan.chips, plan.region.name, recipe.split.rule())
        group_sensor = {L.group: L.sensor for L in layers}
        tasks, summary.skipped = plan_tasks(plan, index_of, store.read_commits(tolerant=True), store.chips_per_shard,
                                            group_sensor, retry_failed, store.n_chips)
        todo = sum(len(t.jobs) for t in tasks)
        log.info(f"{todo} chip(s) to build in {len(tasks)} shard task(s), {summary.skipped} already done; "
                 f"scheduler {scheduler or 'threads'} x {workers}")
        if progress is not None:
            progress.start(todo)  # chips; done ones are not counted
        if tasks:
            memo: dict[tuple[str, str], SourceItem | str] = {}
            with dask_client(scheduler, workers) as client:
                _run_tasks(client, tasks, lambda t: with_candidates(t, plan, group_sensor, memo),
                           store.url, rules, recipe, summary, progress)
        # Every task has finished: what a worker killed mid-write left (its task ran again
        # elsewhere) is removed before the store is consolidated.
        store.remove_interrupted_writes()
        cons = store.consolidate()
    summary.complete = cons.complete
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _run_tasks(client: Any, tasks: list[ShardTask], prepare: Callable[[ShardTask], ShardTask], store_path: str,
               rules: list[LayerRule], recipe: Recipe, summary: BuildSummary,
               progress: Progress | None) -> None:
    local = isinstance(client, ThreadClient)
    coreg = coreg_rule(recipe, [r.layer for r in rules])
    if local:
        as_completed: Callable[[list[Any]], Any] = Completed
    else:
        from distributed import as_completed
    reported: dict[int, float] = {}  # shard -> chips reported by ticks (local threads)
    lock = threading.Lock()

    def tick_for(shard: int) -> Callable[[], None] | None:
        if progress is None or not local:
            return None  # a callback cannot cross to dask workers: whole shards are reported
        step = 1 / len(rules)

        def tick() -> None:
            with lock:
                reported[shard] = reported.get(shard, 0.0) + step
            progress.advance(step)
        return tick

    nthreads = max(1, sum(client.nthreads().values()))
    window = max(2, 2 * nthreads)
    pending = list(reversed(tasks))
    by_key: dict[str, ShardTask] = {}

    def submit() -> Any:
        t = prepare(pending.pop())
        fut = client.submit(build_shard, store_path, t, rules, recipe.chip_size_m, recipe.invalid_policy,
                            tick_for(t.shard), coreg, key=f"shard-{t.shard}-{time.time_ns()}", retries=1, pure=False)
        by_key[fut.key] = t
        return fut

    ac = as_completed([submit() for _ in range(min(window, len(pending)))])
    for fut in ac:
        task = by_key.pop(fut.key)
        try:
            records = fut.result()
        except Exception as e:  # the whole task died (worker lost twice, store write failed)
            reason = f"shard task failed: {type(e).__name__}: {first_line(e)}"
            records = {j.chip_id: ChipRecord(j.index, None, {"*": LayerRecord.failed(reason)}) for j in task.jobs}
            log.warning(f"shard {task.shard}: {reason}")
        log.debug(f"shard {task.shard} done: {len(task.jobs)} chip(s)")
        _tally(records, summary)
        if progress is not None:
            with lock:
                rest = len(task.jobs) - reported.pop(task.shard, 0.0)
            if rest > 1e-9:
                progress.advance(rest)
        if pending:
            ac.add(submit())


def _tally(records: dict[str, ChipRecord], summary: BuildSummary) -> None:
    for cid, rec in records.items():
        states = {r.status for r in rec.layers.values()}
        failed = {g: r.reason or "" for g, r in rec.layers.items() if r.status is Status.FAILED}
        if failed:
            summary.failed[cid] = "; ".join(f"{g}: {reason}" for g, reason in failed.items())
            continue
        summary.built += 1
        if Status.FLAGGED in states:
            summary.flagged += 1
        if Status.DROPPED in states:
            summary.dropped += 1
