"""Samplers: deterministic step-indexed batches (exact resume) and sensor balancing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from torch.utils.data import Sampler

if TYPE_CHECKING:
    from msc_france.data.dataset import MSCFranceDataset


def grouped_permutation(n: int, per_chip: int, group: int, g: torch.Generator) -> torch.Tensor:
    """A permutation of ``n`` sample indices (``per_chip`` consecutive ones per chip) that visits
    chips in windows of ``group``: the chips are shuffled, cut into windows of ``group`` chips, and
    the samples of each window shuffled together.

    Every sample appears exactly once, and each sample's position is as random as in a plain
    shuffle at the scale of a window; what changes is that the samples of a batch come from at
    most ``group`` chips (more tiles of one chip share a batch), so a worker that caches
    ``group`` decoded chips decodes each chip about once per epoch instead of once per sample.
    """
    if n % per_chip:
        raise ValueError(f"{n} samples are not whole chips of {per_chip}")
    chips = torch.randperm(n // per_chip, generator=g)
    out = []
    for w in range(0, len(chips), group):
        window = chips[w : w + group]
        samples = (window[:, None] * per_chip + torch.arange(per_chip)).flatten()
        out.append(samples[torch.randperm(len(samples), generator=g)])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


class StepBatchSampler(Sampler[list[int]]):
    """Batches of indices that depend only on (seed, step): training can resume at any step.

    Epoch ``e`` is a permutation seeded by ``seed + e``; step ``s`` takes the next ``batch_size``
    indices of it (the last partial batch of an epoch is dropped). Under DDP, rank ``r`` of ``w``
    takes every ``w``-th index of the global batch, so ranks see disjoint samples.

    ``group`` > 0 draws each epoch's permutation with :func:`grouped_permutation` (``per_chip``
    samples per chip, windows of ``group`` chips) instead of a plain shuffle.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, steps: int | None = None,
                 rank: int = 0, world_size: int = 1, per_chip: int = 1, group: int = 0) -> None:
        if n < batch_size:
            raise ValueError(f"dataset has {n} samples, fewer than the batch size {batch_size}")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.steps = start_step, steps
        self.rank, self.world_size = rank, world_size
        self.per_chip, self.group = per_chip, group
        self.per_epoch = n // batch_size
        self._order: tuple[int, torch.Tensor] | None = None  # the current epoch's, drawn once

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of every sample that epoch ``epoch`` walks through."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.group > 0:
            return grouped_permutation(self.n, self.per_chip, self.group, g)
        return torch.randperm(self.n, generator=g)

    def batch(self, step: int) -> list[int]:
        """The indices of this rank for ``step``."""
        epoch, b = divmod(step, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.epoch_order(epoch))
        perm = self._order[1]
        full = perm[b * self.batch_size : (b + 1) * self.batch_size]
        return full[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.steps is None or step < self.steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        return (self.steps - self.start_step) if self.steps is not None else 2**31


class SensorBalancedSampler(Sampler[tuple[int, str]]):
    """Yields ``(index, sensor)`` pairs with every sensor drawn equally often.

    Chips where a sensor is flagged or missing are only drawn for the sensors they have, so a
    sensor with fewer valid chips is not under-represented.

    Args:
        available: per sensor, the dataset indices where that sensor is usable.
        num_samples: pairs per epoch.
        seed: RNG seed (epoch ``e`` uses ``seed + e``; see :meth:`set_epoch`).
    """

    def __init__(self, available: dict[str, Sequence[int]], num_samples: int, seed: int = 0) -> None:
        self.sensors = [s for s, idx in available.items() if len(idx)]
        if not self.sensors:
            raise ValueError("no sensor has any sample")
        self.available = {s: list(available[s]) for s in self.sensors}
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    @classmethod
    def from_dataset(cls, ds: MSCFranceDataset, num_samples: int | None = None, seed: int = 0) -> SensorBalancedSampler:
        """Use the dataset's per-sensor statuses (ok chips)."""
        per = ds.tiles**2  # dataset indices are tiles of chips
        avail: dict[str, Sequence[int]] = {s: [i * per + t for i, st in enumerate(ds.status[s]) if st == "ok" for t in range(per)]
                 for s in ds.sensors}
        return cls(avail, num_samples or len(ds) * len(ds.sensors), seed)

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch (and so the draw)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, str]]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        which = torch.randint(len(self.sensors), (self.num_samples,), generator=g)
        for k in which.tolist():
            s = self.sensors[k]
            j = int(torch.randint(len(self.available[s]), (1,), generator=g))
            yield self.available[s][j], s

    def __len__(self) -> int:
        return self.num_samples
