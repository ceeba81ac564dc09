"""The block bootstrap against hand-computed cases and numpy on explicitly resampled data."""

from __future__ import annotations

import numpy as np

from msc_france.eval.bootstrap import block_stats, draws, interval, tile_confusion


def test_two_blocks_give_the_enumerated_distribution() -> None:
    """Blocks A = [0, 0] and B = [1, 1]: a draw of two blocks is AA (mean 0), AB or BA (0.5) or BB
    (1) with probabilities 1/4, 1/2, 1/4; the 95 % interval is [0, 1]. Tiles drawn one by one
    (ignoring the blocks) would give a narrower distribution: the blocks are what widens it.
    """
    st = block_stats("mean", [(np.array([0.0, 0.0, 1.0, 1.0]),)], [np.array([0, 0, 1, 1])], 2)
    counts = draws(2, 4000, seed=3)
    vals = np.array([st.value(c) for c in counts])
    assert set(np.round(vals, 6)) == {0.0, 0.5, 1.0}
    assert abs((vals == 0.5).mean() - 0.5) < 0.03 and abs((vals == 0.0).mean() - 0.25) < 0.03
    iv = interval([st], counts)
    assert (iv.value, iv.low, iv.high) == (0.5, 0.0, 1.0)


def test_weighted_statistics_equal_numpy_on_the_resampled_tiles() -> None:
    rng = np.random.default_rng(0)
    n, c, k = 60, 4, 6
    blocks = rng.integers(0, k, n)
    true, pred = rng.integers(0, c, n), rng.integers(0, c, n)
    t, p = rng.random((n, c)), rng.random((n, c))
    lab, seg = rng.integers(0, c, (n, 8, 8)), rng.integers(0, c, (n, 8, 8))
    counts = np.array([2, 0, 1, 3, 0, 1])
    idx = np.concatenate([np.flatnonzero(blocks == b).repeat(1) for b in range(k) for _ in range(counts[b])])
    # balanced accuracy: mean recall over the classes present, on the resampled tiles
    ba = block_stats("balanced_acc", [(pred, true)], [blocks], k, c).value(counts)
    y, q = true[idx], pred[idx]
    assert np.isclose(ba, np.mean([(q[y == j] == j).mean() for j in range(c) if (y == j).any()]))
    # R2, variance weighted over outputs: 1 - SSE / SST
    r2 = block_stats("r2", [(p, t)], [blocks], k, c).value(counts)
    tt, pp = t[idx], p[idx]
    assert np.isclose(r2, 1 - ((pp - tt) ** 2).sum() / ((tt - tt.mean(0)) ** 2).sum())
    # mIoU from the summed confusion of the resampled tiles
    miou = block_stats("miou", [(tile_confusion(seg, lab, c),)], [blocks], k, c).value(counts)
    ls, ss = lab[idx].ravel(), seg[idx].ravel()
    ious = [((ls == j) & (ss == j)).sum() / ((ls == j) | (ss == j)).sum() for j in range(c)]
    assert np.isclose(miou, np.mean(ious))
    # several pairs: their mean
    two = block_stats("mean", [(true == pred,), (np.ones(n),)], [blocks, blocks], k)
    assert np.isclose(two.value(counts), ((true == pred)[idx].mean() + 1) / 2)


def test_runs_are_resampled_with_the_blocks() -> None:
    """Two runs scoring 0 and 1 on one block: a draw of two runs averages to 0, 0.5 or 1."""
    runs = [block_stats("mean", [(np.full(3, v),)], [np.zeros(3, int)], 1) for v in (0.0, 1.0)]
    iv = interval(runs, draws(1, 2000))
    assert (iv.value, iv.low, iv.high, iv.runs) == (0.5, 0.0, 1.0, 2)
    assert interval(runs[:1], draws(1, 100)).low == 0.0 == interval(runs[:1], draws(1, 100)).high
