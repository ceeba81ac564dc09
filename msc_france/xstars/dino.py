"""DINO: projection head, loss with centring and a teacher-temperature schedule, EMA update."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """3-layer MLP, L2-normalised bottleneck, weight-normalised last layer (DINO)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype scores of CLS features ``x`` (B, dim) -> (B, out_dim)."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DINOLoss(nn.Module):
    """Cross-entropy between sharpened, centred teacher and student distributions.

    Args:
        out_dim: prototypes.
        n_crops: student views (global + local).
        n_global: teacher views (the global crops).
        student_temp: student temperature.
        center_momentum: EMA of the teacher output mean.
    """

    def __init__(self, out_dim: int, n_crops: int, n_global: int = 2, student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        self.n_crops, self.n_global = n_crops, n_global
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.center: torch.Tensor
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], teacher_temp: float) -> torch.Tensor:
        """``student``: n_crops tensors (N, K); ``teacher``: n_global tensors (N, K), no grad."""
        s = [F.log_softmax(x / self.student_temp, dim=-1) for x in student]
        t = [F.softmax((x - self.center) / teacher_temp, dim=-1).detach() for x in teacher]
        total, n = torch.zeros((), device=student[0].device), 0
        for it, q in enumerate(t):
            for iv, p in enumerate(s):
                if iv == it:
                    continue  # the same view
                total = total + torch.sum(-q * p, dim=-1).mean()
                n += 1
        self.update_center(torch.cat(teacher))
        return total / n

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the batch mean of the teacher's outputs (all-reduced under DDP)."""
        batch_center = teacher_out.sum(dim=0, keepdim=True)
        count = torch.tensor([teacher_out.shape[0]], device=teacher_out.device, dtype=teacher_out.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_center / count, alpha=1 - self.center_momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Teacher = momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    sp = dict(student.named_parameters())
    for name, pt in teacher.named_parameters():
        if name in sp:
            pt.mul_(momentum).add_(sp[name].detach(), alpha=1 - momentum)
