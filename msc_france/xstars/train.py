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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from msc_france.data import MSCFranceDataset, StepBatchSampler, collate
from msc_france.data.transforms import (
    CropGeometry,
    MultiCropConfig,
    colocated_crops,
    multicrop_with_geometry,
    random_window,
)
from msc_france.errors import BadInputError, TrainingError, first_line
from msc_france.fsutil import exclusive_lock, refuse_inside_store
from msc_france.xstars.checkpoint import (
    CKPT_FORMAT,
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
    gather_batch,
    init_distributed,
    one_thread,
    resolve_device,
)
from msc_france.xstars.msad import MSADHeads, Positions, msad_loss, positions
from msc_france.xstars.schedules import cosine, linear_warmup
from msc_france.xstars.vit import ViT

log = logging.getLogger(__name__)


class Student(nn.Module):
    """Everything the optimiser trains: backbone, DINO head, MSAD projection heads."""

    def __init__(self, backbone: ViT, dino_head: DINOHead, msad_heads: MSADHeads, msad_tokens: Positions = "all",
                 ) -> None:
        super().__init__()
        self.backbone, self.dino_head, self.msad_heads = backbone, dino_head, msad_heads
        self.msad_positions: Positions = msad_tokens

    def forward(self, sensor: str, global_views: torch.Tensor, local_views: torch.Tensor | None,
                msad_views: dict[str, torch.Tensor], msad_tokens: dict[str, torch.Tensor] | None = None,
                reuse: slice | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Everything a step needs, in one call (DDP allows one forward per backward).

        Returns the DINO outputs of the global and local crops of ``sensor``, and the MSAD
        embeddings (B, A, P, d) (A: one per argument of the loss, see
        :meth:`MSADHeads.arguments`) of ``msad_views`` (through the backbone), of ``msad_tokens``
        (tokens computed elsewhere, e.g. by the frozen model, through the projection heads only)
        and, with ``reuse``, of the rows ``reuse`` of the global crops as ``sensor``'s MSAD view.
        The global crops and the MSAD views go through the transformer as one batch.
        """
        toks = self.backbone.forward_many([(sensor, global_views), *msad_views.items()])
        s_glob = self.dino_head(toks[0][:, 0])
        s_loc = self.dino_head(self.backbone(local_views, sensor)[:, 0]) if local_views is not None else None
        seen = dict(zip(msad_views, toks[1:], strict=True))
        if reuse is not None:
            seen[sensor] = toks[0][reuse]
        emb = {s: self.msad_heads.arguments(positions(t, self.msad_positions), s) for s, t in seen.items()}
        for s, tok in (msad_tokens or {}).items():
            emb[s] = self.msad_heads.arguments(positions(tok, self.msad_positions), s)
        return s_glob, s_loc, emb


class Teacher(nn.Module):
    """The EMA teacher: backbone + DINO head."""

    def __init__(self, backbone: ViT, dino_head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.dino_head = backbone, dino_head

    def forward(self, x: torch.Tensor, sensor: str) -> torch.Tensor:
        """DINO head outputs of images ``x`` seen by ``sensor``."""
        return self.dino_head(self.backbone(x, sensor)[:, 0])


def _param_groups(model: nn.Module) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


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


def pretrain(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg``; returns a summary.

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


def _check_resumable(resume: dict[str, Any], cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume a run whose weights were made with other shapes, naming the settings."""
    old = resume.get("config") or {}
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


def _import_source(cfg: TrainConfig, ds: MSCFranceDataset, img_size: int,
                   out: Path | None) -> tuple[ViT, dict[str, torch.Tensor] | None]:
    """The continual run's source model from weights in another layout (``continual.init``): the
    source sensor fed the bands the store gives it; the load report logged and written to
    ``RUN/init-report.json``.
    """
    from msc_france.store import Store
    from msc_france.xstars.weights import import_vit

    c = cfg.continual
    assert c is not None and c.init is not None
    layer = Store.open(cfg.data.store).layer(c.source_sensor)
    names = [layer.bands[i] for i in ds.band_index[c.source_sensor]]
    imp = import_vit(c.init.path, c.init.format, {c.source_sensor: names}, cfg.model.arch, cfg.model.patch_size,
                     img_size, c.init.bands, patch_embed=cfg.model.patch_embed, which=c.init.which)
    for line in imp.report.lines():
        log.info(f"init {c.init.path}: {line}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "init-report.json").write_text(json.dumps(imp.report.to_json(), indent=1))
    return imp.vit, imp.head


def _load_head(head: DINOHead, state: dict[str, torch.Tensor]) -> None:
    """Start ``head`` from a source model's DINO head; a head of another size is left out, with a warning."""
    want = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        log.warning("the source's DINO head has other sizes than dino.out_dim/hidden_dim/bottleneck_dim: "
                    "the head starts from scratch")
        return
    head.load_state_dict(state)


def _pretrain(cfg: TrainConfig, progress: bool) -> dict[str, Any]:
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
        if source_ckpt["model"]["arch"] != cfg.model.arch or source_ckpt["model"]["patch_size"] != cfg.model.patch_size:
            raise TrainingError(
                f"checkpoint {cfg.continual.checkpoint} is a {source_ckpt['model']['arch']}/"
                f"{source_ckpt['model']['patch_size']}, the config asks for {cfg.model.arch}/{cfg.model.patch_size}")
        if cfg.continual.source_sensor not in source_ckpt["sensors"]:
            raise BadInputError(f"checkpoint {cfg.continual.checkpoint} has no sensor '{cfg.continual.source_sensor}'")

    dino_sensors = [cfg.continual.target_sensor] if cfg.continual else list(cfg.data.sensors)
    ds = MSCFranceDataset(cfg.data.store, sensors=cfg.data.sensors, split=cfg.data.split, bands=cfg.data.bands,
                          size=cfg.data.size, cache=cfg.data.cache, tiles=cfg.data.tiles)
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
        source_head = {k[len("dino_head."):]: v for k, v in source_ckpt["teacher"].items() if k.startswith("dino_head.")}
    elif cfg.continual is not None and cfg.continual.init is not None:
        src, source_head = _import_source(cfg, ds, img_size, out if d.main else None)
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
        _load_head(head, source_head)
    student = Student(backbone, head,
                      MSADHeads(backbone.dim, list(cfg.data.sensors), cfg.msad.proj_dim, cfg.msad.dropout,
                                layout=cfg.msad.heads, normalize=cfg.msad.normalize), cfg.msad.tokens).to(device)
    teacher = Teacher(copy.deepcopy(student.backbone), copy.deepcopy(student.dino_head)).to(device)
    teacher.requires_grad_(False)
    n_crops = cfg.dino.global_crops + cfg.dino.local_crops
    dino_loss = DINOLoss(cfg.dino.out_dim, n_crops, cfg.dino.global_crops, cfg.dino.student_temp,
                         cfg.dino.center_momentum).to(device)
    opt = torch.optim.AdamW(_param_groups(student))
    start = 0
    if resume is not None:
        try:
            student.load_state_dict(resume["student"])
            teacher.load_state_dict(resume["teacher"])
            dino_loss.load_state_dict(resume["dino_loss"])
            opt.load_state_dict(resume["optimizer"])
            if frozen is not None and "frozen" in resume:
                frozen.load_state_dict(resume["frozen"])
            start = int(resume["step"])
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
    mc = MultiCropConfig(cfg.dino.global_crops, cfg.dino.local_crops, cfg.dino.global_size, cfg.dino.local_size,
                         cfg.dino.global_scale, cfg.dino.local_scale, cfg.dino.dihedral)
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
        set_rng_state(resume["rng"])  # after that draw, so the steps see the checkpointed stream
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
        parts = _micro_batches(batch, cfg.optim.accumulate)
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
                    msad = _MSADInputs() if cfg.msad.alpha == 0 else _msad_inputs(
                        cfg, part, frozen, g, device, sensor, step, geoms[1])
                    locals_ = torch.cat(views[cfg.dino.global_crops:]) if cfg.dino.local_crops else None
                    s_glob, s_loc, emb = model(sensor, torch.cat(views[: cfg.dino.global_crops]), locals_,
                                               msad.views, msad.tokens, msad.reuse)
                # The losses in fp32, outside autocast: contrastive logits and DINO's sharpened
                # softmax lose their small differences silently in half precision.
                p_dino, p_msad = _losses(cfg, dino_loss, ttemp, s_glob, s_loc, t_out, emb, msad.pairs, device)
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
            rec = {"step": step, "loss": float(loss.detach()), "dino": float(l_dino.detach()),
                   "msad": float(l_msad.detach()), "alpha": cfg.msad.alpha, "lr": lr,
                   "wd": wd, "momentum": mom, "teacher_temp": ttemp, "dino_sensor": sensor,
                   "elapsed_s": round(time.perf_counter() - t0, 3)}
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if progress:
                print(f"step {step + 1}/{total} loss {rec['loss']:.4f} (dino {rec['dino']:.4f}, msad {rec['msad']:.4f})",
                      flush=True)
        done = step + 1
        if d.main and (done % cfg.run.checkpoint_every == 0 or done == total):
            ckpt = {
                "format": CKPT_FORMAT, "step": done, "config": cfg.model_dump(mode="json"),
                "model": {"arch": cfg.model.arch, "patch_size": cfg.model.patch_size, "img_size": img_size,
                          "patch_embed": cfg.model.patch_embed},
                "sensors": bands, "bands": cfg.data.bands,
                "normalization": {s: {"mean": ds.mean[s].flatten().tolist(), "std": ds.std[s].flatten().tolist()}
                                  for s in cfg.data.sensors},
                "student": student.state_dict(), "teacher": teacher.state_dict(),
                "dino_loss": dino_loss.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(),
            }
            if frozen is not None:
                ckpt["frozen"] = frozen.state_dict()
                ckpt["frozen_sensors"] = dict(frozen.sensor_bands)
            write_checkpoint(ckpt, ckpt_dir / f"ckpt-{done:06d}.pt")
            write_checkpoint(ckpt, ckpt_dir / "last.pt")
    elapsed = time.perf_counter() - t0
    if d.main and log_path.exists():
        _plot(log_path, out / "loss.png")
    return {"steps": total - start, "start": start, "losses": losses, "elapsed_s": elapsed,
            "images_per_s": images_seen / elapsed if elapsed > 0 else 0.0, "out": str(out), "device": str(device)}


@dataclass(frozen=True)
class Precision:
    """The autocast of a run: enabled, its dtype, and whether the loss is scaled (fp16 only)."""

    enabled: bool
    dtype: torch.dtype
    scaled: bool

    @classmethod
    def of(cls, mode: str, device: torch.device) -> Precision:
        """``run.amp`` on ``device``.

        Raises:
            BadInputError: fp16 asked for on a CPU.
        """
        if mode == "auto":
            mode = "bf16" if device.type == "cuda" else "off"
        if mode == "fp16" and device.type != "cuda":
            raise BadInputError("run.amp fp16 needs a GPU (use bf16 on CPU)")
        if mode == "off":
            return cls(False, torch.float32, False)
        return cls(True, torch.float16 if mode == "fp16" else torch.bfloat16, mode == "fp16")


def _micro_batches(batch: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """``batch`` split into ``k`` micro-batches of its sensors' images (what a step reads)."""
    if k == 1:
        return [batch]
    n = next(v["image"].shape[0] for v in batch.values() if isinstance(v, dict))
    if n % k:
        raise BadInputError(f"a batch of {n} samples per process does not split into {k} micro-batches")
    return [{s: {"image": v["image"][i * n // k : (i + 1) * n // k]} for s, v in batch.items() if isinstance(v, dict)}
            for i in range(k)]


def _losses(cfg: TrainConfig, dino_loss: DINOLoss, ttemp: float, s_glob: torch.Tensor, s_loc: torch.Tensor | None,
            t_out: list[torch.Tensor], emb: dict[str, torch.Tensor], pairs: list[tuple[str, str]] | None,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(DINO, MSAD) of one micro-batch, in fp32 whatever the forward's precision."""
    with torch.autocast(device_type=device.type, enabled=False):
        s_out = list(s_glob.float().chunk(cfg.dino.global_crops))
        if s_loc is not None:
            s_out += list(s_loc.float().chunk(cfg.dino.local_crops))
        l_dino = dino_loss(s_out, [t.float() for t in t_out], ttemp)
        l_msad = torch.zeros((), device=device)
        if cfg.msad.alpha > 0:  # MSAD on co-located views; negatives from every rank
            gathered = {s: gather_batch(e.float()) for s, e in emb.items()}
            second = {s: e[:, 1] for s, e in gathered.items()} if cfg.msad.heads == "per-argument" else None
            l_msad = msad_loss({s: e[:, 0] for s, e in gathered.items()}, cfg.msad.tau, cfg.msad.smoothing,
                               pairs=pairs, targets=cfg.msad.targets, second=second)
    return l_dino, l_msad


@dataclass
class _MSADInputs:
    """What MSAD needs in a step: views for the student, tokens of the frozen model, the rows of the
    global crops reused as the DINO sensor's view, and the sensor pairs aligned (None: all).
    """

    views: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    reuse: slice | None = None
    pairs: list[tuple[str, str]] | None = None


def partners(cfg: TrainConfig, sensor: str, step: int) -> list[str]:
    """With ``msad.views: dino``, the sensors aligned to the DINO sensor at ``step``: the others
    in turn (every ordered pair once in ``sensors x (sensors - 1)`` steps), or the continual
    source.
    """
    if cfg.continual is not None:
        return [cfg.continual.source_sensor]
    others = [s for s in cfg.data.sensors if s != sensor]
    r = (step // len(cfg.data.sensors)) % len(others)
    return (others[r:] + others[:r])[: cfg.msad.partners]


def _msad_inputs(cfg: TrainConfig, batch: dict[str, Any], frozen: ViT | None, g: torch.Generator,
                 device: torch.device, sensor: str, step: int, reused: list[CropGeometry]) -> _MSADInputs:
    """Co-located views for MSAD (``reused``: the geometry of the DINO crop ``views: dino`` reuses)."""
    sensors = list(cfg.data.sensors)
    n = batch[sensors[0]]["image"].shape[0]
    if cfg.msad.views == "dino":
        # The DINO sensor's second global crop is its MSAD view; the same ground, flipped and turned
        # the same way, is cut from each partner: token i covers the same ground in every view.
        chosen = partners(cfg, sensor, step)
        views = {p: torch.stack([reused[i].cut(batch[p]["image"][i], cfg.msad.size) for i in range(n)])
                 .to(device, non_blocking=True) for p in chosen}
        out = _MSADInputs(views, reuse=slice(n, 2 * n), pairs=[(sensor, p) for p in chosen])
    else:
        coarsest = min(batch[s]["image"].shape[-1] for s in sensors)
        per_sensor: dict[str, list[torch.Tensor]] = {s: [] for s in sensors}
        for i in range(n):  # one co-located window per image, the same ground in every sensor
            w = random_window(coarsest, cfg.msad.scale, g)
            crops = colocated_crops({s: batch[s]["image"][i] for s in sensors}, w, cfg.msad.size)
            for s in sensors:
                per_sensor[s].append(crops[s])
        views = {s: torch.stack(v).to(device, non_blocking=True) for s, v in per_sensor.items()}
        out = _MSADInputs(views)
    if cfg.continual is not None:  # the source sensor through the frozen model, no gradient
        src, tgt = cfg.continual.source_sensor, cfg.continual.target_sensor
        img = out.views.pop(src)
        out.views = {s: v for s, v in out.views.items() if s == tgt}
        out.pairs = [(tgt, src)]
        with torch.no_grad():
            out.tokens = {src: frozen(img, src)}  # type: ignore[misc]
    return out


def _yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
