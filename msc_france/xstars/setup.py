"""Setting up a training run: the dataset and its loader, the student, teacher and frozen source,
the optimiser, precision, and a resumed run's state, as one :class:`Run` the loop steps through.

The order of the calls that draw from the global RNG (model initialisation, then the loader's base
seed in :func:`~msc_france.xstars.train.pretrain`) is part of what makes a resumed run replay the
same steps: keep it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from msc_france.data import MSCFranceDataset, StepBatchSampler, collate
from msc_france.errors import BadInputError, TrainingError, first_line
from msc_france.xstars.checkpoint import Checkpoint, ModelSpec, build_backbone, load_checkpoint, rng_state
from msc_france.xstars.config import TrainConfig
from msc_france.xstars.dino import DINOHead, DINOLoss
from msc_france.xstars.distributed import Dist, cpu_threads, one_thread
from msc_france.xstars.model import Student, Teacher, param_groups
from msc_france.xstars.msad import MSADHeads
from msc_france.xstars.source import import_source, load_head
from msc_france.xstars.step import Precision
from msc_france.xstars.vit import ViT


@dataclass
class Run:
    """Everything a training loop needs, made once by :func:`setup_run`."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    out: Path
    ds: MSCFranceDataset
    loader: DataLoader
    student: Student
    teacher: Teacher
    model: nn.Module  # the student as the step calls it (DDP-wrapped, compiled)
    frozen: ViT | None
    dino_loss: DINOLoss
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    bands: dict[str, int]
    img_size: int
    dino_sensors: list[str]
    start: int
    resume: Checkpoint | None

    @property
    def total(self) -> int:
        """Steps of the whole run."""
        return self.cfg.optim.steps

    @property
    def lr_peak(self) -> float:
        """The peak learning rate (``optim.lr`` scaled by batch / 256)."""
        return self.cfg.optim.lr * self.cfg.optim.batch_size / 256

    @property
    def log_path(self) -> Path:
        """``log.jsonl``: one :class:`~msc_france.xstars.summary.StepRecord` per line."""
        return self.out / "log.jsonl"

    @property
    def last(self) -> Path:
        """The run's latest checkpoint."""
        return self.out / "checkpoints" / "last.pt"

    def checkpoint(self, done: int) -> Checkpoint:
        """The run's state after ``done`` steps."""
        cfg = self.cfg
        return Checkpoint(
            step=done, config=cfg.model_dump(mode="json"),
            model=ModelSpec(cfg.model.arch, cfg.model.patch_size, self.img_size, cfg.model.patch_embed),
            sensors=self.bands, bands=list(cfg.data.bands) if cfg.data.bands else None,
            normalization={s: {"mean": self.ds.mean[s].flatten().tolist(), "std": self.ds.std[s].flatten().tolist()}
                           for s in cfg.data.sensors},
            student=self.student.state_dict(), teacher=self.teacher.state_dict(),
            dino_loss=self.dino_loss.state_dict(), optimizer=self.opt.state_dict(), rng=rng_state(),
            frozen=self.frozen.state_dict() if self.frozen is not None else None,
            frozen_sensors=dict(self.frozen.sensor_bands) if self.frozen is not None else None)


#: Settings a run's weights depend on: a run resumes only with the same ones.
_SHAPES = {"model": None, "dino": ("out_dim", "hidden_dim", "bottleneck_dim", "global_crops", "local_crops"),
           "msad": ("proj_dim", "heads", "normalize"), "data": ("sensors", "bands")}


def check_resumable(resume: Checkpoint, cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume a run whose weights were made with other shapes, naming the settings.

    Raises:
        BadInputError: naming up to three differing settings.
    """
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


def _from_source(cfg: TrainConfig, backbone: ViT, src: ViT, bands: dict[str, int], source: object) -> None:
    """Continual pretraining: the backbone starts from the source's weights; every known sensor
    from its pretrained embedding, the target sensor from the source sensor's when it has none.
    """
    assert cfg.continual is not None
    if src.embed_mode != backbone.embed_mode:
        raise TrainingError(f"checkpoint {source} has a {src.embed_mode} patch embedding; "
                            f"the config asks for {backbone.embed_mode}")
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("patch_embed.")}
    backbone.load_state_dict(state, strict=False)
    if backbone.embed_mode == ViT.SHARED:
        backbone.patch_embed.load_state_dict(src.patch_embed.state_dict())
        return
    for s in cfg.data.sensors:
        if s in src.patch_embed and src.patch_embed[s].in_channels == bands[s]:
            backbone.patch_embed[s].load_state_dict(src.patch_embed[s].state_dict())
    src_emb = src.patch_embed[cfg.continual.source_sensor]
    tgt = cfg.continual.target_sensor
    if tgt not in src.patch_embed and src_emb.in_channels == bands[tgt]:
        backbone.patch_embed[tgt].load_state_dict(src_emb.state_dict())


def setup_run(cfg: TrainConfig, d: Dist, device: torch.device) -> Run:
    """Build (or restore) every part of the run ``cfg`` describes, and prepare its directory.

    Raises:
        BadInputError: bad data, a run directory that is a file or holds a run of other shapes, a
            source checkpoint without the source sensor.
        TrainingError: a source checkpoint of another architecture or patch embedding.
    """
    out = Path(cfg.run.out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"run directory {out} is a file")
    last = out / "checkpoints" / "last.pt"
    resume = load_checkpoint(last) if last.exists() else None
    if resume is not None:
        check_resumable(resume, cfg, out)
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
        _from_source(cfg, backbone, src, bands, cfg.continual.checkpoint if cfg.continual else None)
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

    sampler = StepBatchSampler(len(ds), cfg.optim.batch_size, cfg.run.seed, start, cfg.optim.steps, d.rank,
                               d.world, per_chip=cfg.data.tiles**2,
                               group=cfg.data.group_chips if cfg.data.order == "grouped" else 0)
    if device.type == "cpu":  # oversubscribed cores make CPU training 5-10x slower
        torch.set_num_threads(cpu_threads(cfg.run.threads, cfg.data.num_workers))
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate,
                        worker_init_fn=one_thread,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.data.num_workers > 0)
    precision = Precision.of(cfg.run.amp, device)
    run = Run(cfg, d, device, out, ds, loader, student, teacher, model, frozen, dino_loss, opt,
              torch.amp.GradScaler(device.type, enabled=precision.scaled), precision, bands, img_size,
              dino_sensors, start, resume)
    if d.main:
        _prepare_dir(run)
    return run


def _prepare_dir(run: Run) -> None:
    """The run directory: checkpoints folder, the config, and a log cut back to the resumed step."""
    (run.out / "checkpoints").mkdir(parents=True, exist_ok=True)
    import yaml

    (run.out / "config.yaml").write_text(yaml.safe_dump(run.cfg.model_dump(mode="json"), sort_keys=False))
    log_path = run.log_path
    if run.start == 0 and log_path.exists():
        log_path.unlink()
    elif log_path.exists():  # drop log lines past the checkpoint we resume from
        lines = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < run.start]
        log_path.write_text("".join(ln + "\n" for ln in lines))
