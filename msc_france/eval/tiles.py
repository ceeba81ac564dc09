"""Every headline number of one report row on one held-out split, as per-block statistics
(:class:`~msc_france.eval.bootstrap.BlockStats`) for the block bootstrap.

The parts are recomputed from what the row's probes already fitted on the training tiles (the
``memo`` of :mod:`msc_france.eval.probes`) and from the retrieval ranks of the report: the
full-sample value of each equals the number the report prints (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from msc_france.eval import metrics as M
from msc_france.eval.bootstrap import BlockStats, block_stats, tile_confusion
from msc_france.eval.features import Features, dominant, fractions, query_tiles
from msc_france.grid import Chip


def chip_blocks(chip_ids: Sequence[str], block_chips: int) -> np.ndarray:
    """Each chip's spatial block (the split's ``block_chips`` x ``block_chips`` cells of the chip
    grid), numbered 0 .. K - 1 in order of first appearance.
    """
    keys = [(c.col // block_chips, c.row // block_chips) for c in map(Chip.from_id, chip_ids)]
    order = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.asarray([order[k] for k in keys], np.int64)


def headline_stats(te: Features, probes: dict, ranks: dict, shifted_ranks: dict | None, kind: str, n_classes: int,
                   patch: int, blocks: np.ndarray, tiles: int) -> dict[str, BlockStats]:
    """The headline numbers of one row (fractions R2 cross, transfer balanced accuracy cross,
    segmentation transfer mIoU, R@1 mean, R@1 mean shifted) as per-block statistics.

    Args:
        te: the row's held-out features.
        probes: the row's fitted probes (``_Scored.probes``).
        ranks: retrieval ranks by kind then pair (``retrieval``'s second value).
        shifted_ranks: ranks of the shifted gallery by pair (mean-pooled), or None.
        kind: the probes' feature kind.
        n_classes: classes.
        patch: the encoder's patch size.
        blocks: the block of each held-out chip (:func:`chip_blocks`).
        tiles: tiles per chip side.
    """
    assert te.labels is not None and te.chip is not None
    k = int(blocks.max()) + 1 if len(blocks) else 1
    tile_block = blocks[te.chip.numpy()]
    sensors = te.sensors
    cross = [(a, b) for a in sensors for b in sensors if a != b]
    out: dict[str, BlockStats] = {}
    if not cross:  # a model of one sensor has no cross-sensor number
        return out
    fte = fractions(te.labels, n_classes).numpy()
    out["fractions R2 cross"] = block_stats(
        "r2", [(_predict(probes[("fractions", kind, a)], te.kind(kind, b)), fte) for a, b in cross],
        [tile_block] * len(cross), k, n_classes)
    y = dominant(te.labels, n_classes).numpy()
    keep = y >= 0
    out["transfer bal. acc cross"] = block_stats(
        "balanced_acc", [(_predict(probes[("linear", kind, a)], te.kind(kind, b)[torch.from_numpy(keep)]).argmax(1),
                          y[keep]) for a, b in cross], [tile_block[keep]] * len(cross), k, n_classes)
    side = te.labels.shape[-1]
    out["seg. transfer mIoU"] = block_stats(
        "miou", [(tile_confusion(_segment(probes[("segmentation", a)], te.patches[b], side, patch, n_classes),
                                 te.labels.numpy(), n_classes),) for a, b in cross],
        [tile_block] * len(cross), k, n_classes)
    pairs = [f"{a}->{b}" for a, b in cross]
    out["R@1 mean"] = block_stats("mean", [((ranks["mean"][p] <= 1).numpy(),) for p in pairs],
                                  [tile_block] * len(pairs), k)
    if shifted_ranks:
        n_chips = len(te.chip) // (tiles * tiles)
        q = (torch.arange(n_chips)[:, None] * tiles * tiles + query_tiles(tiles)[None]).flatten()
        out["R@1 mean shifted"] = block_stats("mean", [((shifted_ranks[p] <= 1).numpy(),) for p in pairs],
                                              [tile_block[q.numpy()]] * len(pairs), k)
    return out


def _predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).float().numpy()


def _segment(probe: torch.nn.Module, patches: torch.Tensor, side: int, patch: int, n_classes: int) -> np.ndarray:
    """Per-pixel classes of the patch-token probe, upsampled as :func:`~msc_france.eval.probes.segmentation` does."""
    with torch.no_grad():
        logits = probe(patches.reshape(-1, patches.shape[-1]))
    n = side // patch
    logits = logits.reshape(-1, n, n, n_classes).permute(0, 3, 1, 2)
    return F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False).argmax(1).numpy()


def shifted_ranks(te: Features, gallery: Features, sensors: Sequence[str], tiles: int) -> dict[str, torch.Tensor]:
    """Ranks of the shifted gallery's positives, mean-pooled features, by ordered pair."""
    n_chips = len(te.chip) // (tiles * tiles) if te.chip is not None else 0
    q = (torch.arange(n_chips)[:, None] * tiles * tiles + query_tiles(tiles)[None]).flatten()
    return {f"{a}->{b}": M.retrieval_ranks(te.kind("mean", a)[q], gallery.kind("mean", b))
            for a in sensors for b in sensors if a != b}


__all__ = ["chip_blocks", "headline_stats", "shifted_ranks"]
