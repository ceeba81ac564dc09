"""Checkpoints: a typed :class:`Checkpoint` written atomically and read with ``weights_only=True``
(no pickled code), RNG states as tensors; the backbone of a checkpoint for evaluation and continual
pretraining.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msc_france.errors import TrainingError, first_line
from msc_france.fsutil import atomic_path, check_regular
from msc_france.xstars.config import TrainConfig
from msc_france.xstars.inputs import ModelInputs, ModelSpec
from msc_france.xstars.vit import ARCHS, ViT

CKPT_FORMAT = "msc-france-xstars-2"
#: Checkpoints written before the input contract (they stored sensors, bands and statistics apart).
CKPT_FORMAT_V1 = "msc-france-xstars-1"

log = logging.getLogger(__name__)

StateDict = dict[str, Any]


@dataclass(frozen=True)
class Checkpoint:
    """What a training run saves, and the only way a checkpoint is read (train, eval, export).

    Attributes:
        step: steps done.
        config: the run's training config.
        inputs: what the model eats (sensors, bands, statistics, input size, backbone).
        student, teacher, dino_loss, optimizer: state dicts.
        rng: every RNG's state (:func:`rng_state`).
        frozen: the frozen source backbone of a continual run, and its sensors' channels.
    """

    step: int
    config: TrainConfig
    inputs: ModelInputs
    student: StateDict
    teacher: StateDict
    dino_loss: StateDict = field(default_factory=dict)
    optimizer: StateDict = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    frozen: StateDict | None = None
    frozen_sensors: dict[str, int] | None = None

    @property
    def model(self) -> ModelSpec:
        """The backbone's architecture."""
        return self.inputs.model

    @property
    def sensors(self) -> dict[str, int]:
        """Sensor -> input channels of the student."""
        return self.inputs.channels

    def network(self, which: str) -> StateDict:
        """The ``teacher`` or ``student`` state dict."""
        if which not in ("teacher", "student"):
            raise ValueError(f"a checkpoint holds a teacher and a student, not {which!r}")
        return self.teacher if which == "teacher" else self.student

    def to_dict(self) -> dict[str, Any]:
        """The stored form (tensors and plain values only, loadable with ``weights_only=True``)."""
        d: dict[str, Any] = {
            "format": CKPT_FORMAT, "step": self.step, "config": self.config.model_dump(mode="json"),
            "inputs": self.inputs.to_json(), "student": self.student, "teacher": self.teacher,
            "dino_loss": self.dino_loss, "optimizer": self.optimizer, "rng": self.rng}
        if self.frozen is not None:
            d["frozen"], d["frozen_sensors"] = self.frozen, dict(self.frozen_sensors or self.sensors)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "checkpoint") -> Checkpoint:
        """Parse the stored form once (a format-1 checkpoint through :func:`migrate_v1`); a missing
        or mistyped entry is a one-line error.

        Raises:
            TrainingError: not an msc-france checkpoint, or one that does not describe itself.
        """
        if isinstance(d, dict) and d.get("format") == CKPT_FORMAT_V1:
            d = migrate_v1(d, source)
        if not isinstance(d, dict) or d.get("format") != CKPT_FORMAT:
            raise TrainingError(f"{source} is not an msc-france X-STARS checkpoint")
        try:
            frozen = d.get("frozen")
            inputs = ModelInputs.from_json(d["inputs"])
            return cls(
                step=int(d["step"]), config=_config(d["config"], source), inputs=inputs,
                student=dict(d["student"]), teacher=dict(d["teacher"]), dino_loss=dict(d.get("dino_loss") or {}),
                optimizer=dict(d.get("optimizer") or {}), rng=dict(d.get("rng") or {}),
                frozen=dict(frozen) if frozen is not None else None,
                frozen_sensors={str(k): int(v) for k, v in dict(d["frozen_sensors"]).items()}
                if d.get("frozen_sensors") else None)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TrainingError(f"{source} does not describe its own weights: {first_line(e)[:200]}") from None

    def checked(self, source: str) -> Checkpoint:
        """This checkpoint once its numbers are plausible: a step within ``[0, optim.steps]`` of its
        own config, and every weight tensor bounded, floating point and finite (a shared or
        downloaded file is untrusted input; :func:`build_backbone` checks the architecture against
        the tensors).

        Raises:
            TrainingError: naming the field or the tensor.
        """
        steps = self.config.optim.steps
        if self.step < 0 or self.step > steps:
            raise TrainingError(f"{source}: step {self.step} is outside its own run's 0..{steps}")
        for name, sd in (("student", self.student), ("teacher", self.teacher), ("frozen", self.frozen or {})):
            for k, v in sd.items():
                check_weight(v, f"{source}: {name} {k}")
        return self


def _config(raw: Any, source: str) -> TrainConfig:
    """The stored training config as the typed config (one line when it does not validate)."""
    from pydantic import ValidationError

    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise TrainingError(f"{source}: its training config does not validate ({where}: {err['msg']})") from None


def migrate_v1(d: dict[str, Any], source: str) -> dict[str, Any]:
    """A format-1 checkpoint (sensors, bands, normalisation and model apart) in today's layout:
    its input contract rebuilt from them, and said in the log.

    Raises:
        TrainingError: a format-1 checkpoint that does not name its bands or statistics.
    """
    try:
        m, bands, norm = dict(d["model"]), d.get("bands"), dict(d.get("normalization") or {})
        sensors = {str(s): int(c) for s, c in dict(d["sensors"]).items()}
        cfg = dict(d.get("config") or {})
        size = int(dict(cfg.get("data") or {}).get("size") or m["img_size"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TrainingError(f"{source} does not describe its own weights: {first_line(e)[:200]}") from None
    if not bands or any(s not in norm for s in sensors):
        raise TrainingError(f"{source} is a format-1 checkpoint that does not name its bands and statistics "
                            "for every sensor; it cannot say what it eats")
    inputs = {s: {"bands": list(bands), "mean": norm[s]["mean"], "std": norm[s]["std"], "gsd_m": None}
              for s in sensors}
    log.warning(f"{source}: a format-1 checkpoint; its input contract was rebuilt from its sensors, bands and "
                "normalisation (GSDs unknown)")
    out = {k: v for k, v in d.items() if k not in ("model", "sensors", "bands", "normalization")}
    return {**out, "format": CKPT_FORMAT, "inputs": {"sensors": inputs, "input_size": size, "model": m}}


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, ints and strings only, so checkpoints load with
    ``weights_only=True`` (no pickled objects, no code execution).
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pstate, pgauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(pstate, dtype=torch.int64),
                   "gauss": None if pgauss is None else float(pgauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore every RNG from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`pretrain`, with one-line errors.

    The file's container is checked first (torch's zip format), then it is read with
    ``weights_only=True``: tensors and plain values only, so a crafted pickle cannot run code.
    """
    p = Path(path)
    check_regular(p, "checkpoint")  # a FIFO would block the read for ever
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise TrainingError(f"cannot read checkpoint {p}: {e.strerror}") from None
    if magic != b"PK\x03\x04":
        raise TrainingError(f"cannot read checkpoint {p}: not a PyTorch zip checkpoint")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise TrainingError(f"cannot read checkpoint {p}: {first_line(e)[:200]}") from None
    return Checkpoint.from_dict(ckpt, str(p)).checked(str(p))


#: Values one weight tensor may hold (ViT-base's and the DINO head's largest are below 2^25).
MAX_WEIGHT_VALUES = 2**27


def check_weight(t: Any, what: str) -> None:
    """A weight tensor read from a file: floating point and finite.

    Raises:
        TrainingError: naming the tensor (``what``) and what is wrong.
    """
    if not isinstance(t, torch.Tensor):
        return
    if t.numel() > MAX_WEIGHT_VALUES:  # before anything allocates: a zero-stride view costs no file space
        raise TrainingError(f"{what} declares {t.numel():,} values, more than any weight of these models")
    if not t.is_floating_point():
        raise TrainingError(f"{what} is {str(t.dtype).removeprefix('torch.')}, not floating point: not weights")
    if not bool(torch.isfinite(t).all()):
        raise TrainingError(f"{what} holds NaN or inf values")


def build_backbone(ckpt: Checkpoint, which: str = "teacher", frozen: bool = False) -> ViT:
    """The ViT of a checkpoint (``teacher`` backbone by default, as DINO evaluates; ``frozen``: the
    frozen source backbone of a continual run).

    The declared architecture is checked against the tensors before any model is built: a crafted
    ``img_size`` of 32,768 would otherwise allocate gigabytes of position embeddings.

    Raises:
        TrainingError: the declaration and the tensors disagree, or the weights do not load.
    """
    try:
        m = ckpt.model
        if frozen:
            if ckpt.frozen is None:
                raise ValueError("no frozen backbone (not a continual run)")
            sd, sensors = dict(ckpt.frozen), dict(ckpt.frozen_sensors or ckpt.sensors)
        else:
            prefix = "backbone."
            sd = {k[len(prefix):]: v for k, v in ckpt.network(which).items() if k.startswith(prefix)}
            sensors = dict(ckpt.sensors)
        arch, patch, img = m.arch, m.patch_size, m.img_size
        pos = sd.get("pos_embed")
        if arch not in ARCHS or pos is None or patch < 1 or img < patch:
            raise ValueError(f"declares {arch}/{patch} at {img} px without matching weights")
        want = (1, 1 + (img // patch) ** 2, ARCHS[arch]["dim"])
        if tuple(pos.shape) != want:
            raise ValueError(f"declares {arch}/{patch} at {img} px ({want}), its pos_embed is {tuple(pos.shape)}")
        if not sensors or any(c < 1 or c > 1024 for c in sensors.values()):
            raise ValueError(f"declares sensors {sensors}")
        vit = ViT(sensors, arch, patch, img, drop_path=0.0, patch_embed=m.patch_embed)
        vit.load_state_dict(sd)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise TrainingError(f"checkpoint does not describe its own weights: {first_line(e)[:200]}") from None
    return vit


def write_checkpoint(obj: Checkpoint, path: Path) -> None:
    """Write a checkpoint through a temp file and a rename; a failed write leaves nothing behind.

    torch reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc...] file
    write failed``: it becomes the OSError (ENOSPC) the CLI reports as "No space left on device".
    """
    try:
        with atomic_path(path) as tmp:
            torch.save(obj.to_dict(), tmp)
    except RuntimeError as e:
        if "write failed" in str(e) or "enforce fail" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
