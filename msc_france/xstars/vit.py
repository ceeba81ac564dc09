"""A Vision Transformer whose transformer is shared by every sensor.

Patch embeddings come in two schemes (``patch_embed``):

* ``per-sensor``: each sensor has its own ``Conv2d(bands_s, dim, patch, patch)``, so sensors with
  different bands share the backbone; adding a sensor (continual pretraining) adds one embedding.
* ``shared``: one embedding for every sensor (the X-STARS paper's setting, all sensors RGB). The
  first layer then cannot keep sensors apart, which is what cross-sensor alignment asks for.

Everything after the embedding (position embeddings, CLS token, blocks, norm) is shared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = {
    "vit_test": dict(dim=64, depth=2, heads=2),
    "vit_tiny": dict(dim=192, depth=12, heads=3),
    "vit_small": dict(dim=384, depth=12, heads=6),
    "vit_base": dict(dim=768, depth=12, heads=12),
}


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop whole residual branches with probability ``p`` while training."""
        if not self.training or self.p == 0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention with ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over tokens ``x`` (B, N, dim)."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One pre-norm transformer block."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """ViT backbone: ``forward(x, sensor)`` returns all tokens (N, 1 + patches, dim), CLS first.

    Args:
        sensors: sensor name -> number of input bands.
        arch: ``vit_test``, ``vit_tiny``, ``vit_small`` or ``vit_base``.
        patch_size: patch side in pixels.
        img_size: the size position embeddings are created for (interpolated for other sizes).
        drop_path: maximum stochastic-depth rate (linearly increasing over blocks).
        patch_embed: ``per-sensor`` or ``shared`` (one embedding; every sensor has the same bands).
    """

    SHARED = "shared"

    def __init__(self, sensors: dict[str, int], arch: str = "vit_tiny", patch_size: int = 16, img_size: int = 224,
                 drop_path: float = 0.1, mlp_ratio: float = 4.0, patch_embed: str = "per-sensor") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture '{arch}' ({', '.join(ARCHS)})")
        a = ARCHS[arch]
        self.arch, self.dim, self.patch_size, self.img_size = arch, a["dim"], patch_size, img_size
        if patch_embed not in ("per-sensor", self.SHARED):
            raise ValueError(f"unknown patch_embed '{patch_embed}' (per-sensor or shared)")
        self.embed_mode = patch_embed
        self.sensor_bands = dict(sensors)
        if patch_embed == self.SHARED:
            counts = set(sensors.values())
            if len(counts) != 1:
                raise ValueError(f"a shared patch embedding needs one band count for every sensor, got {sensors}")
            self.patch_embed = nn.ModuleDict({self.SHARED: nn.Conv2d(counts.pop(), self.dim, patch_size, patch_size)})
        else:
            self.patch_embed = nn.ModuleDict({s: nn.Conv2d(c, self.dim, patch_size, patch_size)
                                              for s, c in sensors.items()})
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, self.dim))
        rates = torch.linspace(0, drop_path, a["depth"]).tolist()
        self.blocks = nn.ModuleList(Block(self.dim, a["heads"], mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(self.dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def has_sensor(self, name: str) -> bool:
        """Whether the model can embed ``name``'s images."""
        return name in self.sensor_bands

    def embedding(self, sensor: str) -> nn.Conv2d:
        """The patch embedding ``sensor``'s images go through."""
        return self.patch_embed[self.SHARED if self.embed_mode == self.SHARED else sensor]  # type: ignore[return-value]

    def add_sensor(self, name: str, bands: int) -> None:
        """Add a sensor (continual pretraining): its own patch embedding, or the shared one."""
        if name in self.sensor_bands:
            return
        if self.embed_mode == self.SHARED:
            if bands != self.patch_embed[self.SHARED].in_channels:
                raise ValueError(f"sensor '{name}' has {bands} bands; the shared embedding takes "
                                 f"{self.patch_embed[self.SHARED].in_channels}")
        else:
            self.patch_embed[name] = nn.Conv2d(bands, self.dim, self.patch_size, self.patch_size).to(
                self.pos_embed.device)
        self.sensor_bands[name] = bands

    def _pos(self, h: int, w: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        if h * w == n and h == w:
            return self.pos_embed
        side = int(math.sqrt(n))
        grid = self.pos_embed[:, 1:].reshape(1, side, side, self.dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, self.dim)], dim=1)

    def _embed(self, x: torch.Tensor, sensor: str) -> torch.Tensor:
        if sensor not in self.sensor_bands:
            raise KeyError(f"the model has no patch embedding for sensor '{sensor}'")
        t = self.embedding(sensor)(x)
        h, w = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self._pos(h, w)

    def _encode(self, t: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)

    def forward(self, x: torch.Tensor, sensor: str) -> torch.Tensor:
        """All tokens of ``x`` (N, bands, H, W) seen by ``sensor``'s patch embedding."""
        return self._encode(self._embed(x, sensor))

    def forward_many(self, views: list[tuple[str, torch.Tensor]],
                     keep: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """All tokens of several (sensor, images) batches, through the shared blocks in one batch.

        Equal to ``[self(x, s) for s, x in views]`` (each sensor's own patch embedding, then the
        shared transformer), but one large batch where the token counts agree: fewer, larger
        matrix products (what a GPU needs). Batches of other sizes go through on their own.

        Args:
            views: (sensor, images) batches.
            keep: per batch, the indices of the patch positions that go through the transformer
                (after the position embedding is added, so each kept token knows where it is), or
                None for all of them; the CLS token is always kept. The output then holds the CLS
                token and the kept positions, in the order given (FLIP's token dropping).
        """
        tokens = [self._embed(x, s) for s, x in views]
        for i, k in enumerate(keep or []):
            if k is not None:
                tokens[i] = torch.cat([tokens[i][:, :1], tokens[i][:, 1:].index_select(1, k)], dim=1)
        out: list[torch.Tensor | None] = [None] * len(tokens)
        by_len: dict[int, list[int]] = {}
        for i, t in enumerate(tokens):
            by_len.setdefault(t.shape[1], []).append(i)
        for idx in by_len.values():
            enc = self._encode(torch.cat([tokens[i] for i in idx])) if len(idx) > 1 else self._encode(tokens[idx[0]])
            for i, part in zip(idx, enc.split([tokens[i].shape[0] for i in idx]), strict=True):
                out[i] = part
        return [t for t in out if t is not None]
