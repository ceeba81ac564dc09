"""Where a continual run's source model comes from: weights in another layout (``continual.init``),
and the source's DINO head.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from msc_france.data import MSCFranceDataset
from msc_france.xstars.config import TrainConfig
from msc_france.xstars.dino import DINOHead
from msc_france.xstars.vit import ViT

log = logging.getLogger(__name__)


def import_source(cfg: TrainConfig, ds: MSCFranceDataset, img_size: int,
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


def load_head(head: DINOHead, state: dict[str, torch.Tensor]) -> None:
    """Start ``head`` from a source model's DINO head; a head of another size is left out, with a warning."""
    want = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        log.warning("the source's DINO head has other sizes than dino.out_dim/hidden_dim/bottleneck_dim: "
                    "the head starts from scratch")
        return
    head.load_state_dict(state)
