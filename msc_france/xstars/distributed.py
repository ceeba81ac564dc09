"""Processes and devices: the torchrun process group, the device resolver, CPU thread counts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from msc_france.errors import BadInputError


@dataclass
class Dist:
    """Process-group facts (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that writes files."""
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of this rank's rows.

    ``torch.distributed.nn.functional.all_gather`` sends the incoming gradients through gloo's
    all-to-all as raw memory: a non-contiguous gradient (MSAD's matrix products give transposed
    ones) arrived scrambled on CPU. Here the gradient is made contiguous, summed over ranks
    (all-reduce) and this rank's rows are kept.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        world, rank = dist.get_world_size(), dist.get_rank()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        ctx.rows = (rank * x.shape[0], (rank + 1) * x.shape[0])
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        lo, hi = ctx.rows
        return grad[lo:hi]


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping the gradient (MSAD negatives).

    Every rank must hold the same number of rows (the step sampler gives each the same share).
    The gradient of a rank's rows is the sum of every rank's loss gradient for them: under DDP,
    whose averaging divides by the world size, the result equals one process on the whole batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def device_kind(requested: str) -> str:
    """``cpu`` or ``cuda`` for a config's ``device`` (``auto`` picks the GPU when there is one)."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise BadInputError("device is cuda but no GPU is available")
    return requested


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """The torch device for a config's ``device`` (``auto``, ``cpu`` or ``cuda``) on this process."""
    kind = device_kind(requested)
    return torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")


def cpu_threads(threads: int | None, workers: int) -> int:
    """Torch threads for a CPU process that shares the cores with ``workers`` loader processes."""
    if threads is not None:
        return threads
    return max(1, (os.cpu_count() or 1) - workers)


def one_thread(_: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per loader worker (no oversubscription)."""
    torch.set_num_threads(1)
