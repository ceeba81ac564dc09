"""Intervals that include the test set's own noise: a block bootstrap over held-out chips, combined
with the training seeds.

Held-out chips are not independent: they lie in spatial blocks (the split's blocks), and tiles of
one chip share its ground. Each headline number is therefore reduced to additive sufficient
statistics per block (:class:`BlockStats`: hits and queries for retrieval, per-class counts for
balanced accuracy, a confusion matrix for mIoU, sums and squares for R2); one bootstrap draw
picks blocks with replacement (and, for a group of runs, runs with replacement) and the number is
recomputed from the drawn blocks' sums. The same block draws serve every row, so rows are compared
on the same resampled test sets. The gallery of retrieval stays whole (queries are resampled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["mean", "r2", "balanced_acc", "miou"]

#: Bootstrap draws per interval, and the interval's coverage.
DRAWS = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class BlockStats:
    """One headline number as additive statistics per block, for every pair it averages over.

    Attributes:
        kind: how the statistics become the number.
        stats: (pairs, blocks, S) sums over each block's tiles (see :func:`block_stats`).
        n_classes: classes (``balanced_acc``, ``miou``, ``r2``).
    """

    kind: Kind
    stats: np.ndarray
    n_classes: int = 0

    def value(self, counts: np.ndarray | None = None) -> float:
        """The number with block ``b`` counted ``counts[b]`` times (None: once each): the mean over
        pairs of each pair's value (NaN pairs left out).
        """
        w = np.ones(self.stats.shape[1]) if counts is None else np.asarray(counts, np.float64)
        sums = np.einsum("b,pbs->ps", w, self.stats)
        vals = [_finish(self.kind, s, self.n_classes) for s in sums]
        vals = [v for v in vals if v == v]
        return float(np.mean(vals)) if vals else float("nan")


def _finish(kind: Kind, s: np.ndarray, c: int) -> float:
    """A number from its summed statistics ``s``."""
    if kind == "mean":
        return float(s[0] / s[1]) if s[1] > 0 else float("nan")
    if kind == "balanced_acc":
        correct, total = s[:c], s[c:]
        present = total > 0
        return float(np.mean(correct[present] / total[present])) if present.any() else float("nan")
    if kind == "miou":
        cm = s.reshape(c, c)
        tp = np.diag(cm)
        denom = cm.sum(0) + cm.sum(1) - tp
        present = denom > 0
        return float(np.mean(tp[present] / denom[present])) if present.any() else 0.0
    n, sse, st, st2 = s[0], s[1], s[2:2 + c], s[2 + c:2 + 2 * c]
    sst = float((st2 - st**2 / max(n, 1e-12)).sum()) if n > 0 else 0.0
    return float(1 - sse / sst) if sst > 1e-12 else float("nan")


def block_stats(kind: Kind, pairs: Sequence[tuple[np.ndarray, ...]], blocks: Sequence[np.ndarray], n_blocks: int,
                n_classes: int = 0) -> BlockStats:
    """Per-block sums of one number's per-tile parts.

    Args:
        kind: ``mean`` (parts: values), ``balanced_acc`` (predicted, true class), ``miou`` (each
            tile's confusion matrix, :func:`tile_confusion`), ``r2`` (predicted (N, C), true (N, C)).
        pairs: for every pair averaged, its per-tile (or per-pixel) parts.
        blocks: for every pair, the block of each row of its parts (0 .. n_blocks - 1).
        n_blocks: blocks of the held-out split.
        n_classes: classes.
    """
    out = []
    for parts, b in zip(pairs, blocks, strict=True):
        b = np.asarray(b, np.int64)
        if kind == "mean":
            v = np.asarray(parts[0], np.float64)
            rows = np.stack([v, np.ones_like(v)], 1)
        elif kind == "balanced_acc":
            pred, true = (np.asarray(x, np.int64) for x in parts)
            onehot = np.eye(n_classes)[true]
            rows = np.concatenate([onehot * (pred == true)[:, None], onehot], 1)
        elif kind == "miou":
            rows = np.asarray(parts[0], np.float64)  # (tiles, C * C): tile_confusion
        else:
            p, t = (np.asarray(x, np.float64) for x in parts)
            rows = np.concatenate([np.ones((len(t), 1)), ((p - t) ** 2).sum(1, keepdims=True), t, t**2], 1)
        sums = np.zeros((n_blocks, rows.shape[1]))
        np.add.at(sums, b, rows)
        out.append(sums)
    return BlockStats(kind, np.stack(out), n_classes)


def tile_confusion(pred: np.ndarray, true: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, H, W) predicted and true classes -> (N, C * C) per-tile confusion counts, ``[true, pred]``
    (pixels whose truth is outside ``0 .. C - 1`` left out).
    """
    pred, true = np.asarray(pred, np.int64).reshape(len(pred), -1), np.asarray(true, np.int64).reshape(len(true), -1)
    keep = (true >= 0) & (true < n_classes) & (pred >= 0) & (pred < n_classes)
    tile = np.broadcast_to(np.arange(len(true))[:, None], true.shape)
    flat = (tile * n_classes + true) * n_classes + pred
    return np.bincount(flat[keep], minlength=len(true) * n_classes * n_classes).reshape(len(true), -1).astype(
        np.float64)


@dataclass(frozen=True)
class Interval:
    """A number with its bootstrap interval (test blocks and, for a group, runs resampled)."""

    value: float
    low: float
    high: float
    runs: int = 1

    def clears(self, other: Interval) -> bool:
        """This interval lies wholly above ``other``."""
        return self.low > other.high


def draws(n_blocks: int, n: int = DRAWS, seed: int = 0) -> np.ndarray:
    """(n, n_blocks) block counts of ``n`` bootstrap draws (blocks drawn with replacement)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_blocks, size=(n, n_blocks))
    return np.stack([np.bincount(p, minlength=n_blocks) for p in picks]).astype(np.float64)


def interval(runs: Sequence[BlockStats], counts: np.ndarray, seed: int = 1, level: float = LEVEL) -> Interval:
    """The mean over ``runs`` of a number, and its percentile interval over the block draws
    ``counts`` (:func:`draws`), the runs drawn with replacement in each (a two-level bootstrap:
    the test set's noise and the training seeds' together).
    """
    rng = np.random.default_rng(seed)
    value = float(np.nanmean([r.value() for r in runs]))
    out = np.empty(len(counts))
    for i, c in enumerate(counts):
        chosen = rng.integers(0, len(runs), len(runs)) if len(runs) > 1 else np.zeros(1, np.int64)
        out[i] = np.nanmean([runs[j].value(c) for j in chosen])
    lo, hi = np.nanpercentile(out, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return Interval(value, float(lo), float(hi), len(runs))


__all__ = ["DRAWS", "BlockStats", "Interval", "block_stats", "draws", "interval", "tile_confusion"]
