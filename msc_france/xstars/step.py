"""The parts of one training step: precision, micro-batches, the losses (in fp32), and the inputs
MSAD needs (co-located views, partner sensors, the frozen model's tokens).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from msc_france.data.batch import Batch
from msc_france.data.transforms import (
    CropGeometry,
    colocated_crops,
    ground_order,
    random_window,
)
from msc_france.errors import BadInputError
from msc_france.xstars.config import TrainConfig
from msc_france.xstars.dino import DINOLoss
from msc_france.xstars.distributed import (
    gather_batch,
)
from msc_france.xstars.msad import msad_loss
from msc_france.xstars.vit import ViT

log = logging.getLogger(__name__)


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


def micro_batches(batch: Batch, k: int) -> list[Batch]:
    """``batch`` split into ``k`` micro-batches of its sensors' images (what a step reads).

    Raises:
        BadInputError: the batch does not split into ``k``.
    """
    try:
        return batch.split(k)
    except ValueError as e:
        raise BadInputError(str(e)) from None


def step_losses(cfg: TrainConfig, dino_loss: DINOLoss, ttemp: float, s_glob: torch.Tensor, s_loc: torch.Tensor | None,
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
class MSADInputs:
    """What MSAD needs in a step: views for the student, tokens of the frozen model, the rows of the
    global crops reused as the DINO sensor's view, the sensor pairs aligned (None: all), the
    patch positions kept (``msad.keep``; None: all) and, with ``msad.dihedral``, each sensor's
    (B, P) ground order of its turned views' patch tokens.
    """

    views: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    reuse: slice | None = None
    pairs: list[tuple[str, str]] | None = None
    keep: torch.Tensor | None = None
    orders: dict[str, torch.Tensor] | None = None

    def to_ground(self, emb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MSAD embeddings (B, A, 1 + P, d) with every sensor's patch positions in ground order
        (the projection heads act per position, so reordering after them is reordering tokens).
        One position per image (``msad.tokens`` cls or mean) has no order to restore.
        """
        if self.orders is None:
            return emb
        out = {}
        for s, e in emb.items():
            order = self.orders[s]
            if e.shape[2] != order.shape[1] + 1:
                out[s] = e
                continue
            idx = order.to(e.device)[:, None, :, None].expand(-1, e.shape[1], -1, e.shape[3])
            out[s] = torch.cat([e[:, :, :1], torch.gather(e[:, :, 1:], 2, idx)], dim=2)
        return out


def kept_positions(cfg: TrainConfig, patch_size: int, g: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """The patch positions of this step's MSAD views that go through the transformer (``msad.keep``):
    a random set drawn from ``g``, sorted, shared by every sensor and image so that position ``i``
    is the same ground in every view and MSAD's negatives stay position by position; None for all.
    """
    if cfg.msad.keep >= 1:
        return None
    n = (cfg.msad.size // patch_size) ** 2
    k = max(1, round(cfg.msad.keep * n))
    return torch.randperm(n, generator=g)[:k].sort().values.to(device)


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


def msad_inputs(cfg: TrainConfig, batch: Batch, frozen: ViT | None, g: torch.Generator,
                 device: torch.device, sensor: str, step: int, reused: list[CropGeometry],
                 patch_size: int = 16) -> MSADInputs:
    """Co-located views for MSAD (``reused``: the geometry of the DINO crop ``views: dino`` reuses;
    ``patch_size``: the student's, for ``msad.keep``).
    """
    sensors = list(cfg.data.sensors)
    n = batch.images[sensors[0]].shape[0]
    if cfg.msad.views == "dino":
        # The DINO sensor's second global crop is its MSAD view; the same ground, flipped and turned
        # the same way, is cut from each partner: token i covers the same ground in every view.
        chosen = partners(cfg, sensor, step)
        views = {p: torch.stack([reused[i].cut(batch.images[p][i], cfg.msad.size) for i in range(n)])
                 .to(device, non_blocking=True) for p in chosen}
        out = MSADInputs(views, reuse=slice(n, 2 * n), pairs=[(sensor, p) for p in chosen])
    else:
        coarsest = min(batch.images[s].shape[-1] for s in sensors)
        per_sensor: dict[str, list[torch.Tensor]] = {s: [] for s in sensors}
        orders: dict[str, list[torch.Tensor]] = {s: [] for s in sensors}
        for i in range(n):  # one co-located window per image, the same ground in every sensor
            w = random_window(coarsest, cfg.msad.scale, g)
            crops = colocated_crops({s: batch.images[s][i] for s in sensors}, w, cfg.msad.size)
            for s in sensors:
                if cfg.msad.dihedral:  # each sensor's view turned its own way; tokens matched by ground
                    code = int(torch.randint(0, 8, (1,), generator=g))
                    geom = CropGeometry(w, code >= 4, code % 4)
                    crops[s] = geom.apply(crops[s])
                    orders[s].append(ground_order(geom, cfg.msad.size // patch_size))
                per_sensor[s].append(crops[s])
        views = {s: torch.stack(v).to(device, non_blocking=True) for s, v in per_sensor.items()}
        out = MSADInputs(views, keep=kept_positions(cfg, patch_size, g, device),
                         orders={s: torch.stack(o) for s, o in orders.items()} if cfg.msad.dihedral else None)
    if cfg.continual is not None:  # the source sensor through the frozen model, no gradient
        src, tgt = cfg.continual.source_sensor, cfg.continual.target_sensor
        img = out.views.pop(src)
        out.views = {s: v for s, v in out.views.items() if s == tgt}
        out.pairs = [(tgt, src)]
        with torch.no_grad():  # the frozen model sees the same kept positions as the student
            out.tokens = {src: frozen.forward_many([(src, img)], keep=[out.keep])[0]}  # type: ignore[union-attr]
    return out
