"""X-STARS pretraining: DINO + alpha * MSAD, from scratch or continual, with exact resume.

One step:
1. DINO on one sensor (sensors take turns, step by step): multi-crop views of that sensor's
   images; the EMA teacher sees the global crops, the student all crops.
2. MSAD on co-located views: one random ground window per image, cropped from every sensor and
   resized to one input size, through the student backbone (every token, or a share `msad.keep`) and the projection
   heads; the loss is summed over sensor pairs. In continual mode the source sensor goes through
   the frozen pretrained backbone instead and only (target, source) is aligned.
3. loss = L_DINO + alpha * L_MSAD; AdamW with cosine lr / weight-decay schedules; EMA teacher.

Everything random in a step is drawn from generators seeded by (seed, step), and checkpoints
hold the model, heads, teacher, optimiser, DINO centre, step and RNG states: resuming reproduces
the next steps' losses exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from msc_france.data.batch import Batch
from msc_france.data.transforms import multicrop_with_geometry
from msc_france.errors import BadInputError, TrainingError
from msc_france.fsutil import exclusive_lock, refuse_inside_store
from msc_france.xstars.checkpoint import set_rng_state, write_checkpoint
from msc_france.xstars.config import TrainConfig
from msc_france.xstars.dino import ema_update
from msc_france.xstars.distributed import device_kind, init_distributed, resolve_device
from msc_france.xstars.schedules import cosine, linear_warmup
from msc_france.xstars.setup import Run, setup_run
from msc_france.xstars.step import MSADInputs, micro_batches, msad_inputs, step_losses
from msc_france.xstars.summary import Progress, StepRecord, TrainSummary

log = logging.getLogger(__name__)


def _plot(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in rows], label="total")
    ax.plot(steps, [r["dino"] for r in rows], label="DINO")
    alpha = rows[-1].get("alpha", 1.0)
    if any(r["msad"] for r in rows):  # the term as it enters the total
        ax.plot(steps, [alpha * r["msad"] for r in rows], label=f"{alpha:g} x MSAD")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(out.parent.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


#: The marker msc-france writes in a run directory it made: without it, every file there is the user's.
RUN_MARKER = ".msc-france-run"


def check_run_dir(out: Path) -> None:
    """Refuse a run directory that is, or is inside, a dataset store, or that holds files of its own
    which msc-france did not write (a run there would overwrite or mix with them).

    Raises:
        BadInputError: naming what was found.
    """
    refuse_inside_store(out, "run directory")
    if out.is_dir() and not (out / RUN_MARKER).is_file():
        foreign = sorted(p.name for p in out.iterdir())  # a file named like a run's is still the user's
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
            raise BadInputError(f"run directory {out} holds files msc-france did not write ({shown}); "
                                "use a new --out")


def pretrain(cfg: TrainConfig, progress: Progress | None = None) -> TrainSummary:
    """Train (or resume) the run described by ``cfg``; reports every step to ``progress`` (rank 0).

    One trainer per run directory: rank 0 holds ``RUN/.run.lock`` for the whole run.

    Raises:
        BadInputError: bad data/config/checkpoint paths, a run directory holding another run or
            files of the user's, or one being trained by another process.
        TrainingError: a NaN/inf loss, or a checkpoint of another architecture.
    """
    out = Path(cfg.run.out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"run directory {out} is a file")
    check_run_dir(out)
    if int(os.environ.get("RANK", "0")) != 0:  # other ranks write nothing
        return _pretrain(cfg, progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).touch()
    with exclusive_lock(out / ".run.lock", lambda holder: BadInputError(
            f"run directory {out} is being trained by {holder}; wait for it or use another --out")):
        return _pretrain(cfg, progress)


def train_step(run: Run, batch: Batch, step: int) -> StepRecord:
    """One optimiser step of ``run`` on ``batch``, as its log record (``elapsed_s`` left at 0).

    DINO on one sensor (sensors take turns), MSAD on co-located views, over the batch's
    micro-batches (``optim.accumulate``); the backbone under autocast, the losses in fp32; then
    clipping, the optimiser, and the EMA teacher.

    Raises:
        TrainingError: a non-finite loss.
    """
    cfg, device, student, teacher = run.cfg, run.device, run.student, run.teacher
    g = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step * 101 + run.dist.rank)
    total = run.total
    lr = cosine(step, total, run.lr_peak, cfg.optim.min_lr, cfg.optim.warmup_steps)
    wd = cosine(step, total, cfg.optim.weight_decay, cfg.optim.weight_decay_end)
    mom = cosine(step, total, cfg.optim.momentum_teacher, 1.0)
    ttemp = linear_warmup(step, cfg.dino.warmup_teacher_temp_steps, cfg.dino.warmup_teacher_temp,
                          cfg.dino.teacher_temp)
    run.opt.param_groups[0].update(lr=lr, weight_decay=wd)
    run.opt.param_groups[1].update(lr=lr)
    student.train()
    sensor = run.dino_sensors[step % len(run.dino_sensors)]  # DINO on one sensor per step, sensors taking turns
    run.opt.zero_grad(set_to_none=True)
    parts = micro_batches(batch, cfg.optim.accumulate)
    loss = l_dino = l_msad = torch.zeros((), device=device)
    for k, part in enumerate(parts):
        # Under DDP, gradients are averaged over ranks once, at the last micro-batch.
        sync = (contextlib.nullcontext() if run.dist.world == 1 or k == len(parts) - 1
                else run.model.no_sync())  # type: ignore[operator]
        with sync:
            with torch.autocast(device_type=device.type, dtype=run.precision.dtype, enabled=run.precision.enabled):
                crops, geoms = multicrop_with_geometry(part.images[sensor], cfg.dino, g)
                views = [v.to(device, non_blocking=True) for v in crops]
                with torch.no_grad():
                    t_out = [teacher(v, sensor) for v in views[: cfg.dino.global_crops]]
                msad = MSADInputs() if cfg.msad.alpha == 0 else msad_inputs(
                    cfg, part, run.frozen, g, device, sensor, step, geoms[1], cfg.model.patch_size)
                locals_ = torch.cat(views[cfg.dino.global_crops:]) if cfg.dino.local_crops else None
                s_glob, s_loc, emb = run.model(sensor, torch.cat(views[: cfg.dino.global_crops]), locals_,
                                               msad.views, msad.tokens, msad.reuse, msad.keep)
                emb = msad.to_ground(emb)
            # The losses in fp32, outside autocast: contrastive logits and DINO's sharpened
            # softmax lose their small differences silently in half precision.
            p_dino, p_msad = step_losses(cfg, run.dino_loss, ttemp, s_glob, s_loc, t_out, emb, msad.pairs, device)
            p_loss = p_dino + cfg.msad.alpha * p_msad
            if not torch.isfinite(p_loss):
                raise TrainingError(f"loss is {p_loss.item()} at step {step}; lower optim.lr or check the data "
                                    f"(last checkpoint: {run.last if run.last.exists() else 'none'})")
            run.scaler.scale(p_loss / len(parts)).backward()
        loss, l_dino, l_msad = (loss + p_loss.detach() / len(parts), l_dino + p_dino.detach() / len(parts),
                                l_msad + p_msad.detach() / len(parts))
    run.scaler.unscale_(run.opt)
    if cfg.optim.clip_grad > 0:
        nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.clip_grad)
    if step < cfg.dino.freeze_last_layer_steps:
        for p in student.dino_head.last_layer.parameters():
            p.grad = None
    run.scaler.step(run.opt)
    run.scaler.update()
    ema_update(teacher.backbone, student.backbone, mom)
    ema_update(teacher.dino_head, student.dino_head, mom)
    return StepRecord(step, float(loss), float(l_dino), float(l_msad), cfg.msad.alpha, lr, wd, mom, ttemp, sensor, 0.0)


def _pretrain(cfg: TrainConfig, progress: Progress | None) -> TrainSummary:
    d = init_distributed(device_kind(cfg.run.device))
    device = resolve_device(cfg.run.device, d.local_rank)
    run = setup_run(cfg, d, device)
    losses: list[float] = []
    t0 = time.perf_counter()
    images_seen = 0
    it: Iterator[Batch] = iter(run.loader)  # draws a base seed from the global RNG
    if run.resume is not None:
        set_rng_state(run.resume.rng)  # after that draw, so the steps see the checkpointed stream
    total = run.total
    for step in range(run.start, total):
        batch = next(it)
        rec = train_step(run, batch, step)
        images_seen += len(batch.images[rec.dino_sensor]) * d.world
        losses.append(rec.loss)
        if d.main:
            rec = replace(rec, elapsed_s=round(time.perf_counter() - t0, 3))
            with open(run.log_path, "a") as f:
                f.write(json.dumps(rec.to_json()) + "\n")
            if progress is not None:
                progress(rec, total)
        done = step + 1
        if d.main and (done % cfg.run.checkpoint_every == 0 or done == total):
            ckpt = run.checkpoint(done)
            write_checkpoint(ckpt, run.out / "checkpoints" / f"ckpt-{done:06d}.pt")
            write_checkpoint(ckpt, run.last)
    elapsed = time.perf_counter() - t0
    if d.main and run.log_path.exists():
        _plot(run.log_path, run.out / "loss.png")
    return TrainSummary(total - run.start, run.start, losses, elapsed, images_seen / elapsed if elapsed > 0 else 0.0,
                        str(run.out), str(device))
