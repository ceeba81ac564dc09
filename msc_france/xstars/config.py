"""Pretraining configuration (``pipelines/pretrain-*.yaml``), strictly validated."""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from msc_france.config import StrictModel, load_config_mapping, parse_model
from msc_france.data.dataset import DatasetView
from msc_france.data.transforms import MultiCropConfig
from msc_france.errors import BadInputError
from msc_france.selection import ChipSelection
from msc_france.xstars.msad import Positions, Targets


class DataConfig(StrictModel):
    """Which store, sensors, bands and split to train on."""

    store: str = "data/demo.zarr"
    sensors: list[str] = Field(default_factory=lambda: ["sentinel-2-l2a", "landsat-8-c2-l2", "aerial"])
    bands: list[str] | None = Field(default_factory=lambda: ["red", "green", "blue"])
    split: Literal["train", "val", "test"] | None = "train"
    size: int = Field(128, ge=16, le=4096, description="every sensor's chip (or tile) is resized to this on load")
    tiles: int = Field(1, ge=1, description="cut each chip into tiles x tiles co-located samples")
    num_workers: int = Field(2, ge=0)
    cache: bool | int = Field(False, description="keep decoded chips in memory per worker: true (every chip: "
                              "small stores) or the number of chips kept (least recently used out)")
    order: Literal["shuffle", "grouped"] = Field(
        "shuffle", description="shuffle: a plain permutation per epoch; grouped: chips in shuffled windows of "
        "group_chips whose tiles are shuffled together (each chip decoded about once per epoch with a cache)")
    group_chips: int = Field(8, ge=1, description="chips per window with order: grouped")
    where: str | None = Field(None, description="keep the chips for which this expression over the index's "
                              "columns holds, e.g. \"cloud_fraction_sentinel_2_l2a < 0.1\" (docs/dataset-format.md)")
    chips: list[str] | None = Field(None, description="keep only these chip ids")

    def selection(self) -> ChipSelection:
        """The chips trained on."""
        return ChipSelection.of(self.split, where=self.where, chips=self.chips)

    def view(self) -> DatasetView:
        """How they are read: no ``valid``, ``bounds`` or ``crs`` (training reads none of them)."""
        return DatasetView(tuple(self.sensors), None if self.bands is None else tuple(self.bands), self.size,
                           self.tiles, cache=self.cache, extras=False)


class ModelConfig(StrictModel):
    """The ViT backbone."""

    arch: Literal["vit_test", "vit_tiny", "vit_small", "vit_base"] = "vit_tiny"
    patch_size: int = Field(16, ge=2, le=256)
    drop_path: float = Field(0.1, ge=0, lt=1)
    patch_embed: Literal["per-sensor", "shared"] = Field(
        "per-sensor", description="one patch embedding per sensor, or one for all (sensors with the same bands)")


class DinoConfig(MultiCropConfig):
    """DINO self-distillation (defaults scaled down from the paper's for CPU): its multi-crop
    (:class:`~msc_france.data.transforms.MultiCropConfig`, the fields defined once), head and
    temperatures.
    """

    out_dim: int = Field(4096, ge=2, le=262144)
    hidden_dim: int = Field(512, ge=1, le=65536)
    bottleneck_dim: int = Field(128, ge=1, le=65536)
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.04, gt=0)
    warmup_teacher_temp: float = Field(0.04, gt=0)
    warmup_teacher_temp_steps: int = Field(0, ge=0)
    center_momentum: float = Field(0.9, ge=0, le=1)
    freeze_last_layer_steps: int = Field(0, ge=0)


#: The reference code's MSAD (its bugs fixed: gradient kept, heads trained), as ``msad.preset``.
MSAD_PRESETS: dict[str, dict[str, Any]] = {
    "reference": {"heads": "per-argument", "normalize": False, "proj_dim": 1024, "tau": 1.0, "targets": "soft",
                  "smoothing": 0.3, "alpha": 0.1, "dropout": 0.2},
}


class MSADConfig(StrictModel):
    """The Multi-Sensor Alignment Dense loss; ``alpha = 0`` trains DINO alone.

    ``preset: reference`` sets the reference code's settings (:data:`MSAD_PRESETS`); keys given
    next to a preset override it.
    """

    preset: Literal["reference"] | None = None
    alpha: float = Field(0.1, ge=0)
    heads: Literal["shared", "per-sensor", "per-argument"] = Field(
        "shared", description="shared projection head (aligns the backbone), then optionally one more head "
        "per sensor or per argument of the loss (the reference code's)")
    normalize: bool = Field(True, description="L2-normalise the embeddings (the reference code does not)")
    tokens: Positions = Field("all", description="positions aligned: all (dense MSAD), or one global vector per "
                              "image: cls or mean (a global InfoNCE baseline)")
    proj_dim: int = Field(256, ge=1, le=65536)
    tau: float = Field(0.1, gt=0)
    smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the targets")
    targets: Targets = Field("hard", description="hard (each place its own match) or soft (the reference code's)")
    dropout: float = Field(0.2, ge=0, lt=1)
    size: int = Field(64, ge=8, le=4096, description="input size of the co-located views")
    scale: tuple[float, float] = (0.5, 1.0)
    views: Literal["separate", "dino"] = Field(
        "separate", description="separate: a co-located view of every sensor, all sensor pairs aligned; dino: the "
        "DINO sensor's second global crop is its MSAD view (its tokens reused, no extra pass), the same window cut "
        "from `partners` other sensors in turn, pairs (DINO sensor, partner)")
    partners: int = Field(1, ge=1, description="with views: dino, other sensors aligned to the DINO sensor per step")
    keep: float = Field(1.0, gt=0, le=1, description="fraction of the MSAD views' patch tokens that go through the "
                        "transformer (one random set of positions per step, the same in every sensor and image; "
                        "the loss is computed at those positions and the CLS token): fewer tokens, a cheaper step")
    dihedral: bool = Field(False, description="turn and flip every sensor's co-located view on its own (a random "
                           "symmetry of the square per sensor and image) and align the tokens by the ground they "
                           "cover, not by their place in the grid: tokens that must not depend on orientation")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in MSAD_PRESETS:
            return {**MSAD_PRESETS[data["preset"]], **data}
        return data


class OptimConfig(StrictModel):
    """AdamW with cosine schedules."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=2)
    lr: float = Field(5e-4, gt=0, description="base learning rate, scaled by batch_size / 256")
    min_lr: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    momentum_teacher: float = Field(0.996, ge=0, le=1)
    clip_grad: float = Field(3.0, ge=0)
    accumulate: int = Field(1, ge=1, description="micro-batches per optimiser step (batch_size is split into "
                            "them; MSAD negatives come from each micro-batch, gathered over ranks)")


class InitConfig(StrictModel):
    """Weights to start from, in another project's layout (see :mod:`msc_france.xstars.weights`)."""

    format: Literal["timm", "dino", "xstars", "msc-france"]
    path: str
    bands: list[str] | str | None = Field(
        None, description="the source model's input bands in order (names, Sentinel-2 ids such as B04, or a preset: "
        "ssl4eo-s12); needed when its patch embedding takes other bands than the source sensor is fed")
    which: Literal["teacher", "student"] = Field("teacher", description="network of a DINO-style checkpoint")


class ContinualConfig(StrictModel):
    """Adapt a pretrained model to a new sensor: a frozen copy encodes the source sensor.

    The pretrained model is a checkpoint of ``msc-france pretrain`` (``checkpoint``), or weights in
    another layout (``init``: timm, DINO, the X-STARS authors' checkpoints).
    """

    checkpoint: str | None = None
    init: InitConfig | None = None
    source_sensor: str
    target_sensor: str

    @model_validator(mode="after")
    def _one_source(self) -> ContinualConfig:
        if (self.checkpoint is None) == (self.init is None):
            raise ValueError("continual needs exactly one of checkpoint (an msc-france checkpoint) or init "
                             "(weights in timm, dino, xstars or msc-france layout)")
        if self.init is not None and self.init.format == "msc-france":
            return self.model_copy(update={"checkpoint": self.init.path, "init": None})
        return self


class RunConfig(StrictModel):
    """Where and how to run."""

    out: str = "runs/xstars"
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="mixed precision of the backbone and heads (the losses stay fp32): auto is bf16 on "
        "a GPU and off on CPU; bf16 also runs on CPU; fp16 (GPU only) adds loss scaling")
    compile: bool = Field(False, description="torch.compile the student (GPU runs; compiling costs minutes)")

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_bool(cls, v: Any) -> Any:  # configs written before the modes: true / false
        return {True: "auto", False: "off"}.get(v, v) if isinstance(v, bool) else v
    threads: int | None = Field(
        None, ge=1, description="torch threads of the training process on CPU (default: the cores left "
        "after one per DataLoader worker, at least 1); each worker uses one")


class TrainConfig(StrictModel):
    """A pretraining run."""

    name: str
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    dino: DinoConfig = DinoConfig()
    msad: MSADConfig = MSADConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()
    continual: ContinualConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        for size in (self.dino.global_size, self.dino.local_size, self.msad.size):
            if size % self.model.patch_size:
                raise ValueError(f"crop size {size} is not a multiple of the patch size {self.model.patch_size}")
        if self.optim.batch_size % self.optim.accumulate:
            raise ValueError(f"optim.batch_size {self.optim.batch_size} is not divisible into "
                             f"{self.optim.accumulate} micro-batches")
        if self.msad.views == "dino" and self.msad.keep < 1:
            raise ValueError("msad.keep below 1 needs msad.views separate (views: dino reuses whole DINO crops)")
        if self.msad.dihedral and (self.msad.views == "dino" or self.msad.keep < 1):
            raise ValueError("msad.dihedral needs msad.views separate and msad.keep 1 (kept positions and reused "
                             "DINO crops are places in the grid, not on the ground)")
        if self.msad.views == "dino" and self.msad.size != self.dino.global_size:
            raise ValueError(f"msad.views dino reuses a global crop: msad.size ({self.msad.size}) must equal "
                             f"dino.global_size ({self.dino.global_size})")
        if self.continual is None and self.msad.alpha > 0 and len(self.data.sensors) < 2:
            raise ValueError("MSAD (alpha > 0) needs at least two sensors")
        if self.continual is not None:
            for s in (self.continual.source_sensor, self.continual.target_sensor):
                if s not in self.data.sensors:
                    raise ValueError(f"continual sensor '{s}' is not in data.sensors")
        return self


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        if cur.get(k) is None:
            cur[k] = {}
        if not isinstance(cur[k], dict):
            raise BadInputError(f"--set {dotted}: '{k}' is not a section")
        cur = cur[k]
    cur[keys[-1]] = value


def load_train_config(path: str, overrides: list[str] | None = None, **top: Any) -> TrainConfig:
    """Load a pretraining config, apply ``key.sub=value`` overrides (YAML values), validate."""
    p, data = load_config_mapping(path)
    for item in overrides or []:
        if "=" not in item:
            raise BadInputError(f"--set expects key=value, got '{item}'")
        k, v = item.split("=", 1)
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError:
            raise BadInputError(f"--set {k.strip()}: not a plain YAML value (tags and objects are refused)") from None
        _set(data, k.strip(), value)
    for dotted, v in top.items():
        if v is not None:
            _set(data, dotted, v)
    return parse_model(TrainConfig, data, f"config {p}")
