"""X-STARS pretraining: DINO + alpha * MSAD, from scratch or continual, with exact resume.

One step:
1. DINO on one sensor (sensors take turns, step by step): multi-crop views of that sensor's
   images; the EMA teacher sees the global crops, the student all crops.
2. MSAD on co-located views: one random ground window per image, cropped from every sensor and
   resized to one input size, through the student backbone (all tokens kept) and the projection
   heads; the loss is summed over sensor pairs. In continual mode the source sensor goes through
   the frozen pretrained backbone instead and only (target, source) is aligned.
3. loss = L_DINO + alpha * L_MSAD; AdamW with cosine lr / weight-decay schedules; EMA teacher.

Everything random in a step is drawn from generators seeded by (seed, step), and checkpoints
hold the model, heads, teacher, optimiser, DINO centre, step and RNG states: resuming reproduces
the next steps' losses exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from msc_france.data import MSCFranceDataset, StepBatchSampler, collate
from msc_france.data.transforms import (
    multicrop_with_geometry,
)
from msc_france.errors import BadInputError, TrainingError, first_line
from msc_france.fsutil import exclusive_lock, refuse_inside_store
from msc_france.xstars.checkpoint import (
    Checkpoint,
    ModelSpec,
    build_backbone,
    load_checkpoint,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from msc_france.xstars.config import TrainConfig
from msc_france.xstars.dino import DINOHead, DINOLoss, ema_update
from msc_france.xstars.distributed import (
    cpu_threads,
    device_kind,
    init_distributed,
    one_thread,
    resolve_device,
)
from msc_france.xstars.model import Student, Teacher, param_groups
from msc_france.xstars.msad import MSADHeads
from msc_france.xstars.schedules import cosine, linear_warmup
from msc_france.xstars.source import import_source, load_head
from msc_france.xstars.step import MSADInputs, Precision, micro_batches, msad_inputs, step_losses
from msc_france.xstars.summary import Progress, StepRecord, TrainSummary
from msc_france.xstars.vit import ViT

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


#: What a run directory holds (and a marker saying msc-france made it): anything else is the user's.
RUN_FILES = frozenset({"config.yaml", "log.jsonl", "loss.png", "checkpoints", ".run.lock", ".msc-france-run"})
RUN_MARKER = ".msc-france-run"


def check_run_dir(out: Path) -> None:
    """Refuse a run directory that is, or is inside, a dataset store, or that holds files of its own
    which msc-france did not write (a run there would overwrite or mix with them).

    Raises:
        BadInputError: naming what was found.
    """
    refuse_inside_store(out, "run directory")
    if out.is_dir() and not (out / RUN_MARKER).exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES)
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


#: Settings a run's weights depend on: a run resumes only with the same ones.
_SHAPES = {"model": None, "dino": ("out_dim", "hidden_dim", "bottleneck_dim", "global_crops", "local_crops"),
           "msad": ("proj_dim", "heads", "normalize"), "data": ("sensors", "bands")}


def _check_resumable(resume: Checkpoint, cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume a run whose weights were made with other shapes, naming the settings."""
    old = resume.config
    new = cfg.model_dump(mode="json")
    diffs = []
    for section, keys in _SHAPES.items():
        a, b = old.get(section) or {}, new.get(section) or {}
        for k in keys or sorted(set(a) | set(b)):
            if k in a and a.get(k) != b.get(k):
                diffs.append(f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
    if diffs:
        raise BadInputError(f"run directory {out} holds a run with other shapes ({'; '.join(diffs[:3])}); "
                            "use a new --out")


def _pretrain(cfg: TrainConfig, progress: Progress | None) -> TrainSummary:
    d = init_distributed(device_kind(cfg.run.device))
    device = resolve_device(cfg.run.device, d.local_rank)
    out = Path(cfg.run.out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"run directory {out} is a file")
    last = out / "checkpoints" / "last.pt"
    resume = load_checkpoint(last) if last.exists() else None
    if resume is not None:
        _check_resumable(resume, cfg, out)
    torch.manual_seed(cfg.run.seed + d.rank)

    frozen: ViT | None = None
    source_ckpt = None
    if cfg.continual is not None and cfg.continual.checkpoint is not None:
        source_ckpt = load_checkpoint(cfg.continual.checkpoint)
        if source_ckpt.model.arch != cfg.model.arch or source_ckpt.model.patch_size != cfg.model.patch_size:
            raise TrainingError(
                f"checkpoint {cfg.continual.checkpoint} is a {source_ckpt.model.arch}/"
                f"{source_ckpt.model.patch_size}, the config asks for {cfg.model.arch}/{cfg.model.patch_size}")
        if cfg.continual.source_sensor not in source_ckpt.sensors:
            raise BadInputError(f"checkpoint {cfg.continual.checkpoint} has no sensor '{cfg.continual.source_sensor}'")

    dino_sensors = [cfg.continual.target_sensor] if cfg.continual else list(cfg.data.sensors)
    ds = MSCFranceDataset(cfg.data.store, sensors=cfg.data.sensors, split=cfg.data.split, bands=cfg.data.bands,
                          size=cfg.data.size, cache=cfg.data.cache, tiles=cfg.data.tiles, where=cfg.data.where,
                          chips=cfg.data.chips)
    if len(ds) < cfg.optim.batch_size:
        raise BadInputError(f"{len(ds)} training samples in {cfg.data.store}, fewer than batch size "
                            f"{cfg.optim.batch_size} (use data.tiles to cut chips into more samples)")
    bands = {s: len(ds.band_index[s]) for s in cfg.data.sensors}

    img_size = cfg.dino.global_size
    backbone = ViT(bands, cfg.model.arch, cfg.model.patch_size, img_size, cfg.model.drop_path,
                   patch_embed=cfg.model.patch_embed)
    src: ViT | None = None
    source_head: dict[str, torch.Tensor] | None = None
    if source_ckpt is not None:
        src = build_backbone(source_ckpt)
        source_head = {k[len("dino_head."):]: v for k, v in source_ckpt.teacher.items() if k.startswith("dino_head.")}
    elif cfg.continual is not None and cfg.continual.init is not None:
        src, source_head = import_source(cfg, ds, img_size, out if d.main else None)
    if src is not None:
        assert cfg.continual is not None
        if src.embed_mode != backbone.embed_mode:
            raise TrainingError(f"checkpoint {source_ckpt} has a {src.embed_mode} patch embedding; "
                                f"the config asks for {backbone.embed_mode}")
        state = {k: v for k, v in src.state_dict().items() if not k.startswith("patch_embed.")}
        backbone.load_state_dict(state, strict=False)
        if backbone.embed_mode == ViT.SHARED:
            backbone.patch_embed.load_state_dict(src.patch_embed.state_dict())
        else:
            for s in cfg.data.sensors:  # start every known sensor from its pretrained embedding
                if s in src.patch_embed and src.patch_embed[s].in_channels == bands[s]:
                    backbone.patch_embed[s].load_state_dict(src.patch_embed[s].state_dict())
            src_emb = src.patch_embed[cfg.continual.source_sensor]
            tgt = cfg.continual.target_sensor
            if tgt not in src.patch_embed and src_emb.in_channels == bands[tgt]:
                backbone.patch_embed[tgt].load_state_dict(src_emb.state_dict())
        frozen = src.to(device).eval().requires_grad_(False)

    head = DINOHead(backbone.dim, cfg.dino.out_dim, cfg.dino.hidden_dim, cfg.dino.bottleneck_dim)
    if source_head:  # the source's DINO head, when it has one of the configured size
        load_head(head, source_head)
    student = Student(backbone, head,
                      MSADHeads(backbone.dim, list(cfg.data.sensors), cfg.msad.proj_dim, cfg.msad.dropout,
                                layout=cfg.msad.heads, normalize=cfg.msad.normalize), cfg.msad.tokens).to(device)
    teacher = Teacher(copy.deepcopy(student.backbone), copy.deepcopy(student.dino_head)).to(device)
    teacher.requires_grad_(False)
    n_crops = cfg.dino.global_crops + cfg.dino.local_crops
    dino_loss = DINOLoss(cfg.dino.out_dim, n_crops, cfg.dino.global_crops, cfg.dino.student_temp,
                         cfg.dino.center_momentum).to(device)
    opt = torch.optim.AdamW(param_groups(student))
    start = 0
    if resume is not None:
        try:
            student.load_state_dict(resume.student)
            teacher.load_state_dict(resume.teacher)
            dino_loss.load_state_dict(resume.dino_loss)
            opt.load_state_dict(resume.optimizer)
            if frozen is not None and resume.frozen is not None:
                frozen.load_state_dict(resume.frozen)
            start = resume.step
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise BadInputError(f"run directory {out}: its checkpoint does not fit this configuration "
                                f"({first_line(e)[:160]}); use a new --out") from None
    model: nn.Module = student
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    if cfg.run.compile:  # the student's forward; checkpoints hold the plain modules
        model = torch.compile(model)  # type: ignore[assignment]

    total = cfg.optim.steps
    sampler = StepBatchSampler(len(ds), cfg.optim.batch_size, cfg.run.seed, start, total, d.rank, d.world,
                               per_chip=cfg.data.tiles**2,
                               group=cfg.data.group_chips if cfg.data.order == "grouped" else 0)
    if device.type == "cpu":  # oversubscribed cores make CPU training 5-10x slower
        torch.set_num_threads(cpu_threads(cfg.run.threads, cfg.data.num_workers))
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate,
                        worker_init_fn=one_thread,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.data.num_workers > 0)
    mc = cfg.dino  # a DinoConfig is a MultiCropConfig
    lr_peak = cfg.optim.lr * cfg.optim.batch_size / 256
    precision = Precision.of(cfg.run.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
    ckpt_dir = out / "checkpoints"
    log_path = out / "log.jsonl"
    if d.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(_yaml(cfg))
        if start == 0 and log_path.exists():
            log_path.unlink()
        elif log_path.exists():  # drop log lines past the checkpoint we resume from
            lines = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < start]
            log_path.write_text("".join(ln + "\n" for ln in lines))
    losses: list[float] = []
    t0 = time.perf_counter()
    images_seen = 0
    it: Iterator[dict[str, Any]] = iter(loader)  # draws a base seed from the global RNG
    if resume is not None:
        set_rng_state(resume.rng)  # after that draw, so the steps see the checkpointed stream
    for step in range(start, total):
        batch = next(it)
        g = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step * 101 + d.rank)
        lr = cosine(step, total, lr_peak, cfg.optim.min_lr, cfg.optim.warmup_steps)
        wd = cosine(step, total, cfg.optim.weight_decay, cfg.optim.weight_decay_end)
        mom = cosine(step, total, cfg.optim.momentum_teacher, 1.0)
        ttemp = linear_warmup(step, cfg.dino.warmup_teacher_temp_steps, cfg.dino.warmup_teacher_temp,
                              cfg.dino.teacher_temp)
        opt.param_groups[0].update(lr=lr, weight_decay=wd)
        opt.param_groups[1].update(lr=lr)
        student.train()
        sensor = dino_sensors[step % len(dino_sensors)]  # DINO on one sensor per step, sensors taking turns
        opt.zero_grad(set_to_none=True)
        parts = micro_batches(batch, cfg.optim.accumulate)
        loss = l_dino = l_msad = torch.zeros((), device=device)
        for k, part in enumerate(parts):
            # Under DDP, gradients are averaged over ranks once, at the last micro-batch.
            sync = contextlib.nullcontext() if d.world == 1 or k == len(parts) - 1 else model.no_sync()  # type: ignore[operator]
            with sync:
                with torch.autocast(device_type=device.type, dtype=precision.dtype, enabled=precision.enabled):
                    crops, geoms = multicrop_with_geometry(part[sensor]["image"], mc, g)
                    views = [v.to(device, non_blocking=True) for v in crops]
                    with torch.no_grad():
                        t_out = [teacher(v, sensor) for v in views[: cfg.dino.global_crops]]
                    msad = MSADInputs() if cfg.msad.alpha == 0 else msad_inputs(
                        cfg, part, frozen, g, device, sensor, step, geoms[1], cfg.model.patch_size)
                    locals_ = torch.cat(views[cfg.dino.global_crops:]) if cfg.dino.local_crops else None
                    s_glob, s_loc, emb = model(sensor, torch.cat(views[: cfg.dino.global_crops]), locals_,
                                               msad.views, msad.tokens, msad.reuse, msad.keep)
                # The losses in fp32, outside autocast: contrastive logits and DINO's sharpened
                # softmax lose their small differences silently in half precision.
                p_dino, p_msad = step_losses(cfg, dino_loss, ttemp, s_glob, s_loc, t_out, emb, msad.pairs, device)
                p_loss = p_dino + cfg.msad.alpha * p_msad
                if not torch.isfinite(p_loss):
                    raise TrainingError(f"loss is {p_loss.item()} at step {step}; lower optim.lr or check the data "
                                        f"(last checkpoint: {last if last.exists() else 'none'})")
                scaler.scale(p_loss / len(parts)).backward()
            loss, l_dino, l_msad = (loss + p_loss.detach() / len(parts), l_dino + p_dino.detach() / len(parts),
                                    l_msad + p_msad.detach() / len(parts))
        scaler.unscale_(opt)
        if cfg.optim.clip_grad > 0:
            nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.clip_grad)
        if step < cfg.dino.freeze_last_layer_steps:
            for p in student.dino_head.last_layer.parameters():
                p.grad = None
        scaler.step(opt)
        scaler.update()
        ema_update(teacher.backbone, student.backbone, mom)
        ema_update(teacher.dino_head, student.dino_head, mom)
        images_seen += batch[sensor]["image"].shape[0] * d.world
        losses.append(float(loss.detach()))
        if d.main:
            rec = StepRecord(step, float(loss.detach()), float(l_dino.detach()), float(l_msad.detach()),
                             cfg.msad.alpha, lr, wd, mom, ttemp, sensor, round(time.perf_counter() - t0, 3))
            with open(log_path, "a") as f:
                f.write(json.dumps(rec.to_json()) + "\n")
            if progress is not None:
                progress(rec, total)
        done = step + 1
        if d.main and (done % cfg.run.checkpoint_every == 0 or done == total):
            ckpt = Checkpoint(
                step=done, config=cfg.model_dump(mode="json"),
                model=ModelSpec(cfg.model.arch, cfg.model.patch_size, img_size, cfg.model.patch_embed),
                sensors=bands, bands=list(cfg.data.bands) if cfg.data.bands else None,
                normalization={s: {"mean": ds.mean[s].flatten().tolist(), "std": ds.std[s].flatten().tolist()}
                               for s in cfg.data.sensors},
                student=student.state_dict(), teacher=teacher.state_dict(), dino_loss=dino_loss.state_dict(),
                optimizer=opt.state_dict(), rng=rng_state(),
                frozen=frozen.state_dict() if frozen is not None else None,
                frozen_sensors=dict(frozen.sensor_bands) if frozen is not None else None)
            write_checkpoint(ckpt, ckpt_dir / f"ckpt-{done:06d}.pt")
            write_checkpoint(ckpt, ckpt_dir / "last.pt")
    elapsed = time.perf_counter() - t0
    if d.main and log_path.exists():
        _plot(log_path, out / "loss.png")
    return TrainSummary(total - start, start, losses, elapsed, images_seen / elapsed if elapsed > 0 else 0.0,
                        str(out), str(device))


def _yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
