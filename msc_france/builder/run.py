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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msc_france.builder.scheduler import Completed, ThreadClient, check_scheduler, dask_client
from msc_france.builder.shard import ChipJob, LayerRule, ShardTask, build_shard, coreg_rule
from msc_france.config import Catalog, Recipe, SensorSpec
from msc_france.errors import BadInputError, SourceError, first_line
from msc_france.grid import pixels_per_chip
from msc_france.plan import Plan
from msc_france.products import SourceItem, rules_for
from msc_france.progress import Progress
from msc_france.store import LABELS_GROUP, Layer, Store, StoreSchema
from msc_france.store.records import ChipRecord, Commits, LayerRecord, Status

log = logging.getLogger(__name__)


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
                            specs[name].scale, specs[name].offset, specs[name].units, tuple(sr.overviews),
                            specs[name].facts()))
    classes = None
    if recipe.labels is not None:
        s = specs[recipe.labels.sensor]
        layers.append(Layer(LABELS_GROUP, s.name, gsds[s.name], ("class",), s.dtype, True, units="class",
                            facts=s.facts()))
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
