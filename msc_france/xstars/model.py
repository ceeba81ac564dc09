"""The networks of one X-STARS run: the student (backbone, DINO head, MSAD heads) and the EMA teacher,
and their optimiser parameter groups.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from msc_france.xstars.dino import DINOHead
from msc_france.xstars.msad import MSADHeads, Positions, positions
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
                reuse: slice | None = None, keep: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Everything a step needs, in one call (DDP allows one forward per backward).

        Returns the DINO outputs of the global and local crops of ``sensor``, and the MSAD
        embeddings (B, A, P, d) (A: one per argument of the loss, see
        :meth:`MSADHeads.arguments`) of ``msad_views`` (through the backbone), of ``msad_tokens``
        (tokens computed elsewhere, e.g. by the frozen model, through the projection heads only)
        and, with ``reuse``, of the rows ``reuse`` of the global crops as ``sensor``'s MSAD view.
        The global crops and the MSAD views go through the transformer as one batch; with ``keep``,
        only those patch positions of the MSAD views do (and ``msad_tokens`` hold the same ones).
        """
        toks = self.backbone.forward_many([(sensor, global_views), *msad_views.items()],
                                          keep=[None, *[keep] * len(msad_views)])
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


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """AdamW groups: weights decay, biases and norms (1-D parameters) do not."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
