"""Setting up a training run: the dataset and its loader, the student, teacher and frozen source,
the optimiser, precision, and a resumed run's state, as one :class:`Run` the loop steps through.

The order of the calls that draw from the global RNG (model initialisation, then the loader's base
seed in :func:`~msc_france.xstars.train.pretrain`) is part of what makes a resumed run replay the
same steps: keep it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from msc_france.data import MSCFranceDataset, StepBatchSampler, collate_batch
from msc_france.errors import BadInputError, TrainingError, first_line
from msc_france.store import Store
from msc_france.xstars.checkpoint import Checkpoint, build_backbone, load_checkpoint, rng_state
from msc_france.xstars.config import TrainConfig
from msc_france.xstars.dino import DINOHead, DINOLoss
from msc_france.xstars.distributed import Dist, cpu_threads, one_thread
from msc_france.xstars.inputs import ModelInputs, ModelSpec, SensorInput
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
    _gsd: dict[str, float] | None = None

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
            step=done, config=cfg, inputs=self.inputs, student=self.student.state_dict(),
            teacher=self.teacher.state_dict(), dino_loss=self.dino_loss.state_dict(), optimizer=self.opt.state_dict(),
            rng=rng_state(), frozen=self.frozen.state_dict() if self.frozen is not None else None,
            frozen_sensors=dict(self.frozen.sensor_bands) if self.frozen is not None else None)

    @property
    def inputs(self) -> ModelInputs:
        """What the trained model eats: the run's sensors, bands, statistics and GSDs."""
        cfg, ds = self.cfg, self.ds
        layers = {L.group: L for L in Store.open(ds.path).layers} if self._gsd is None else {}
        gsd = self._gsd if self._gsd is not None else {s: float(layers[s].gsd) for s in cfg.data.sensors}
        self._gsd = gsd
        return ModelInputs(
            {s: SensorInput(tuple(ds.band_names[s]), tuple(ds.mean[s].flatten().tolist()),
                            tuple(ds.std[s].flatten().tolist()), gsd[s]) for s in cfg.data.sensors},
            cfg.data.size, ModelSpec(cfg.model.arch, cfg.model.patch_size, self.img_size, cfg.model.patch_embed))


#: Settings a run's weights depend on: a run resumes only with the same ones.
_SHAPES = {"model": None, "dino": ("out_dim", "hidden_dim", "bottleneck_dim", "global_crops", "local_crops"),
           "msad": ("proj_dim", "heads", "normalize"), "data": ("sensors", "bands")}


def check_resumable(resume: Checkpoint, cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume a run whose weights were made with other shapes, naming the settings.

    Raises:
        BadInputError: naming up to three differing settings.
    """
    old = resume.config.model_dump(mode="json")
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


def _source_norm(cfg: TrainConfig, source: Checkpoint | None) -> bool | ModelInputs:
    """How a run's images are standardised: the store's statistics, except the source sensor of a
    continual run from an msc-france checkpoint, which is fed as the source model was trained
    (its own bands and statistics: the frozen anchor reads what it learnt on).
    """
    if source is None or cfg.continual is None:
        return True
    return replace(source.inputs, sensors={cfg.continual.source_sensor: source.inputs.sensors[cfg.continual.source_sensor]})


def _source_checkpoint(cfg: TrainConfig) -> Checkpoint | None:
    """A continual run's source checkpoint, checked against the config (None otherwise).

    Raises:
        TrainingError: another architecture. BadInputError: no source sensor in it.
    """
    if cfg.continual is None or cfg.continual.checkpoint is None:
        return None
    src = load_checkpoint(cfg.continual.checkpoint)
    if src.model.arch != cfg.model.arch or src.model.patch_size != cfg.model.patch_size:
        raise TrainingError(f"checkpoint {cfg.continual.checkpoint} is a {src.model.arch}/{src.model.patch_size}, "
                            f"the config asks for {cfg.model.arch}/{cfg.model.patch_size}")
    if cfg.continual.source_sensor not in src.sensors:
        raise BadInputError(f"checkpoint {cfg.continual.checkpoint} has no sensor '{cfg.continual.source_sensor}'")
    return src


@dataclass
class _Nets:
    """The networks and losses of a run, before any state is restored."""

    student: Student
    teacher: Teacher
    frozen: ViT | None
    dino_loss: DINOLoss
    opt: torch.optim.Optimizer


def _networks(cfg: TrainConfig, ds: MSCFranceDataset, bands: dict[str, int], img_size: int,
              source: Checkpoint | None, out: Path | None, device: torch.device) -> _Nets:
    """Student (from the source model in a continual run), EMA teacher, frozen source, DINO loss and
    optimiser; the order of the random draws is the one resumed runs replay.
    """
    backbone = ViT(bands, cfg.model.arch, cfg.model.patch_size, img_size, cfg.model.drop_path,
                   patch_embed=cfg.model.patch_embed)
    src: ViT | None = None
    source_head: dict[str, torch.Tensor] | None = None
    if source is not None:
        src = build_backbone(source)
        source_head = {k[len("dino_head."):]: v for k, v in source.teacher.items() if k.startswith("dino_head.")}
    elif cfg.continual is not None and cfg.continual.init is not None:
        src, source_head = import_source(cfg, ds, img_size, out)
    frozen = None
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
    return _Nets(student, teacher, frozen, dino_loss, torch.optim.AdamW(param_groups(student)))


def _restore(nets: _Nets, resume: Checkpoint | None, out: Path) -> int:
    """Load a resumed run's state into ``nets``; the step it resumes from (0 for a new run).

    Raises:
        BadInputError: a checkpoint that does not fit this configuration.
    """
    if resume is None:
        return 0
    try:
        nets.student.load_state_dict(resume.student)
        nets.teacher.load_state_dict(resume.teacher)
        nets.dino_loss.load_state_dict(resume.dino_loss)
        nets.opt.load_state_dict(resume.optimizer)
        if nets.frozen is not None and resume.frozen is not None:
            nets.frozen.load_state_dict(resume.frozen)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise BadInputError(f"run directory {out}: its checkpoint does not fit this configuration "
                            f"({first_line(e)[:160]}); use a new --out") from None
    return resume.step


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
    source_ckpt = _source_checkpoint(cfg)
    dino_sensors = [cfg.continual.target_sensor] if cfg.continual else list(cfg.data.sensors)
    ds = MSCFranceDataset(cfg.data.store, cfg.data.selection(), replace(cfg.data.view(), normalize=_source_norm(
        cfg, source_ckpt)))
    if len(ds) < cfg.optim.batch_size:
        raise BadInputError(f"{len(ds)} training samples in {cfg.data.store}, fewer than batch size "
                            f"{cfg.optim.batch_size} (use data.tiles to cut chips into more samples)")
    bands = {s: len(ds.band_index[s]) for s in cfg.data.sensors}
    img_size = cfg.dino.global_size
    nets = _networks(cfg, ds, bands, img_size, source_ckpt, out if d.main else None, device)
    start = _restore(nets, resume, out)
    model: nn.Module = nets.student
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(
            nets.student, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    if cfg.run.compile:  # the student's forward; checkpoints hold the plain modules
        model = torch.compile(model)  # type: ignore[assignment]
    if device.type == "cpu":  # oversubscribed cores make CPU training 5-10x slower
        torch.set_num_threads(cpu_threads(cfg.run.threads, cfg.data.num_workers))
    precision = Precision.of(cfg.run.amp, device)
    run = Run(cfg, d, device, out, ds, _loader(cfg, ds, start, d, device), nets.student, nets.teacher, model,
              nets.frozen, nets.dino_loss, nets.opt, torch.amp.GradScaler(device.type, enabled=precision.scaled),
              precision, bands, img_size, dino_sensors, start, resume)
    if d.main:
        _prepare_dir(run)
    return run


def _loader(cfg: TrainConfig, ds: MSCFranceDataset, start: int, d: Dist, device: torch.device) -> DataLoader:
    """The run's loader: a step-indexed batch sampler (a resumed run draws the same batches), one
    torch thread per worker, :class:`~msc_france.data.Batch` batches.
    """
    sampler = StepBatchSampler(len(ds), cfg.optim.batch_size, cfg.run.seed, start, cfg.optim.steps, d.rank,
                               d.world, per_chip=cfg.data.tiles**2,
                               group=cfg.data.group_chips if cfg.data.order == "grouped" else 0)
    return DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate_batch,
                      worker_init_fn=one_thread, pin_memory=device.type == "cuda",
                      persistent_workers=cfg.data.num_workers > 0)


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
