"""The grouped order: every sample once per epoch, reproducible, a few chips per batch; the
bounded chip cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from msc_france.data import MSCFranceDataset, StepBatchSampler
from msc_france.data.samplers import grouped_permutation


@pytest.mark.parametrize(("chips", "per_chip", "group"), [(13, 4, 3), (8, 1, 8), (5, 9, 16)])
def test_grouped_permutation_visits_every_sample_once(chips: int, per_chip: int, group: int) -> None:
    n = chips * per_chip
    perm = grouped_permutation(n, per_chip, group, torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(n))
    # Consecutive windows of group * per_chip samples hold the tiles of `group` whole chips.
    w = group * per_chip
    for k in range(0, n, w):
        window = perm[k : k + w].tolist()
        by_chip = {i // per_chip for i in window}
        assert len(by_chip) <= group and len(window) == len(by_chip) * per_chip
    again = grouped_permutation(n, per_chip, group, torch.Generator().manual_seed(0))
    assert torch.equal(perm, again)
    other = grouped_permutation(n, per_chip, group, torch.Generator().manual_seed(1))
    assert not torch.equal(perm, other)


def test_grouped_sampler_epochs_resume_and_ranks() -> None:
    s = StepBatchSampler(48, 8, seed=3, steps=12, per_chip=4, group=3)
    batches = list(s)
    assert len(batches) == 12
    for e in range(2):  # 6 steps per epoch: each epoch is every sample exactly once
        seen = [i for b in batches[6 * e : 6 * (e + 1)] for i in b]
        assert sorted(seen) == list(range(48))
    assert batches[:6] != batches[6:]  # a new order each epoch
    assert all(len({i // 4 for i in b}) <= 3 for b in batches[:6:3])  # a batch at a window start: <= 3 chips
    resumed = StepBatchSampler(48, 8, seed=3, start_step=7, steps=12, per_chip=4, group=3)
    assert list(resumed) == batches[7:]
    ranks = [StepBatchSampler(48, 8, 3, rank=r, world_size=2, per_chip=4, group=3).batch(4) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(batches[4])
    plain = StepBatchSampler(48, 8, seed=3, steps=6)
    assert list(plain) != batches[:6]
    with pytest.raises(ValueError, match="whole chips"):
        grouped_permutation(10, 4, 2, torch.Generator())


def test_bounded_cache_keeps_the_last_chips(tiny_store: Path) -> None:
    ds = MSCFranceDataset(tiny_store, split=None, sensors=["sentinel-2-l2a"], size=32, tiles=2, cache=2)
    for i in range(len(ds)):  # 4 tiles per chip, chips in order
        ds[i]
    assert len(ds._chips) == 2  # the last two chips
    assert [k[0] for k in ds._chips] == ds.chip_index[-2:]
    # Values from the cache equal a fresh read.
    fresh = MSCFranceDataset(tiny_store, split=None, sensors=["sentinel-2-l2a"], size=32, tiles=2)
    torch.testing.assert_close(ds[len(ds) - 1]["sentinel-2-l2a"]["image"],
                               fresh[len(ds) - 1]["sentinel-2-l2a"]["image"])
    with pytest.raises(Exception, match="cache must be"):
        MSCFranceDataset(tiny_store, split=None, cache=0)
