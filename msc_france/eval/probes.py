"""Frozen-feature probes of the evaluation: retrieval, classification, class fractions, segmentation.

Each function takes the features of the training tiles and of the held-out tiles
(:class:`~msc_france.eval.features.Features`) and returns plain numbers for the report.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from msc_france.eval import metrics as M
from msc_france.eval.features import Features, dominant, fractions, patch_labels, query_tiles

KINDS = ("cls", "mean", "dense")


def _centred(tr: Features, te: Features, kind: str, sensor: str, center: bool) -> torch.Tensor:
    x = te.kind(kind, sensor).float()
    if center:  # per-sensor centring, with the mean of the training tiles of that sensor
        x = x - tr.kind(kind, sensor).float().mean(0, keepdim=True)
    return x


def retrieval(tr: Features, te: Features, sensors: list[str], center: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cross-sensor retrieval of co-located held-out tiles for every feature kind and ordered pair.

    Returns (metrics by kind then pair, with ``mean_R@1`` per kind; ranks by kind then pair).
    """
    out: dict[str, Any] = {}
    ranks: dict[str, Any] = {}
    for kind in KINDS:
        feats = {s: _centred(tr, te, kind, s, center) for s in sensors}
        res: dict[str, Any] = {}
        rk: dict[str, Any] = {}
        for a in sensors:
            for b in sensors:
                if a != b:
                    rk[f"{a}->{b}"] = M.retrieval_ranks(feats[a], feats[b])
                    res[f"{a}->{b}"] = M.retrieval_metrics(rk[f"{a}->{b}"])
        if res:
            res["mean_R@1"] = sum(v["R@1"] for v in res.values()) / len(res)  # before the key exists
        out[kind], ranks[kind] = res, rk
    return out, ranks


def shifted_retrieval(te: Features, gallery: Features, sensors: list[str], tiles: int,
                      shifted: bool = True) -> dict[str, Any]:
    """Cross-sensor retrieval against a gallery that layout cannot solve: the queries are the
    held-out tiles with a counterpart in ``gallery`` (:func:`~msc_france.eval.features.query_tiles`),
    the gallery the quarter-tile-shifted, randomly rotated or flipped tiles of every held-out chip;
    a query's positive is the gallery tile it overlaps most (9/16 of its ground). With ``shifted``
    false the gallery is the grid's own tiles (turned only): every tile a query, its positive the
    same tile.

    Returns metrics by kind then ordered pair, with ``mean_R@1`` per kind.
    """
    assert te.chip is not None
    per_chip = tiles * tiles
    n_chips = te.chip.shape[0] // per_chip
    q = ((torch.arange(n_chips)[:, None] * per_chip + query_tiles(tiles)[None]).flatten() if shifted
         else torch.arange(te.chip.shape[0]))
    out: dict[str, Any] = {}
    for kind in KINDS:
        res: dict[str, Any] = {}
        for a in sensors:
            for b in sensors:
                if a != b:
                    res[f"{a}->{b}"] = M.retrieval_metrics(M.retrieval_ranks(te.kind(kind, a)[q],
                                                                             gallery.kind(kind, b)))
        if res:
            res["mean_R@1"] = sum(v["R@1"] for v in res.values()) / len(res)
        out[kind] = res
    return out


def pair_retrieval(queries: torch.Tensor, gallery: torch.Tensor) -> dict[str, float]:
    """Retrieval between two feature sets of the same tiles (e.g. a student and a frozen model)."""
    return M.retrieval_metrics(M.retrieval_ranks(queries, gallery))


def _fit(memo: dict[Any, Any] | None, key: Any, fit: Any) -> Any:
    """``fit()``, or what it returned for ``key`` before: probes depend on the training tiles only,
    so every held-out split reuses them.
    """
    if memo is None:
        return fit()
    if key not in memo:
        memo[key] = fit()
    return memo[key]


def classification(tr: Features, te: Features, ytr: torch.Tensor, yte: torch.Tensor, n_classes: int,
                   sensors: list[str], k: int, kind: str, memo: dict[Any, Any] | None = None,
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dominant-class classification per sensor (kNN and linear probe; accuracy, balanced accuracy,
    macro-F1) and cross-sensor transfer of the linear probe (accuracy, balanced accuracy).
    ``memo`` keeps the fitted probes for the next held-out split.
    """
    cls_out, transfer = {}, {}
    mtr, mte = ytr >= 0, yte >= 0
    probes = {}
    for s in sensors:
        ftr, fte = tr.kind(kind, s)[mtr], te.kind(kind, s)[mte]
        knn = M.knn_predict(ftr, ytr[mtr], fte, n_classes, k=k)
        probe = _fit(memo, ("linear", kind, s), lambda ftr=ftr: M.linear_probe(ftr, ytr[mtr], n_classes))
        probes[s] = probe
        with torch.no_grad():
            lin = probe(fte).argmax(1)
        y = yte[mte]
        cls_out[s] = {"knn_acc": M.accuracy(knn, y), "linear_acc": M.accuracy(lin, y),
                      "linear_balanced_acc": M.balanced_accuracy(lin, y, n_classes),
                      "linear_macro_f1": M.macro_f1(lin, y, n_classes),
                      "knn_balanced_acc": M.balanced_accuracy(knn, y, n_classes),
                      "n_train": int(mtr.sum()), "n_test": int(mte.sum())}
    for a in sensors:
        for b in sensors:
            with torch.no_grad():
                pred = probes[a](te.kind(kind, b)[mte]).argmax(1)
            transfer[f"{a}->{b}"] = {"acc": M.accuracy(pred, yte[mte]),
                                     "balanced_acc": M.balanced_accuracy(pred, yte[mte], n_classes)}
    return cls_out, transfer


def majority_baseline(ytr: torch.Tensor, yte: torch.Tensor, n_classes: int) -> dict[str, Any]:
    """What always predicting the training set's most frequent class scores."""
    y = yte[yte >= 0]
    top = int(torch.bincount(ytr[ytr >= 0], minlength=n_classes).argmax())
    pred = torch.full_like(y, top)
    return {"class": top, "acc": M.accuracy(pred, y), "balanced_acc": M.balanced_accuracy(pred, y, n_classes),
            "macro_f1": M.macro_f1(pred, y, n_classes)}


def fraction_probe(tr: Features, te: Features, n_classes: int, sensors: list[str], kind: str,
                   lam: float, memo: dict[Any, Any] | None = None) -> dict[str, float]:
    """Ridge regression from tile features to the tile's class fractions; held-out R2 for every
    (train sensor -> test sensor) pair: the diagonal is same-sensor, the rest cross-sensor.
    """
    assert tr.labels is not None and te.labels is not None
    ftr, fte = fractions(tr.labels, n_classes), fractions(te.labels, n_classes)
    out = {}
    for a in sensors:
        model = _fit(memo, ("fractions", kind, a), lambda a=a: M.ridge(tr.kind(kind, a), ftr, lam))
        for b in sensors:
            with torch.no_grad():
                out[f"{a}->{b}"] = M.r2(model(te.kind(kind, b)), fte)
    return out


def segmentation(tr: Features, te: Features, patch: int, n_classes: int, sensors: list[str],
                 names: dict[int, str], memo: dict[Any, Any] | None = None,
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Patch-level linear segmentation scored per pixel (mIoU, per-class IoU, pixel accuracy), and
    its cross-sensor transfer: the probe fitted on one sensor's training tokens applied to every
    other sensor's held-out tokens (``transfer_mIoU`` by test sensor).
    """
    assert tr.labels is not None and te.labels is not None
    ptr = patch_labels(tr.labels, patch)
    out, preds = {}, {}
    size = te.labels.shape[-1]
    side = size // patch
    for s in sensors:
        def fit(s: str = s) -> torch.nn.Module:
            xtr = tr.patches[s].reshape(-1, tr.patches[s].shape[-1])
            ytr = ptr.reshape(-1)
            g = torch.Generator().manual_seed(0)
            sel = torch.nonzero(ytr >= 0).flatten()
            sel = sel[torch.randperm(len(sel), generator=g)[:20000]]  # bounded probe cost
            return M.linear_probe(xtr[sel], ytr[sel], n_classes, steps=200)

        probe = _fit(memo, ("segmentation", s), fit)

        def predict(sensor: str, probe: torch.nn.Module = probe) -> torch.Tensor:
            with torch.no_grad():
                logits = probe(te.patches[sensor].reshape(-1, te.patches[sensor].shape[-1]))
            logits = logits.reshape(-1, side, side, n_classes).permute(0, 3, 1, 2)
            return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False).argmax(1)

        assert te.labels is not None
        up = predict(s)
        cm = M.confusion(up.flatten(), te.labels.flatten(), n_classes)
        ious, miou = M.iou_from_confusion(cm)
        out[s] = {"mIoU": miou, "per_class": {names[i]: v for i, v in enumerate(ious)},
                  "pixel_acc": float(cm.diagonal().sum() / cm.sum().clamp_min(1)),
                  "transfer_mIoU": {b: M.iou_from_confusion(M.confusion(predict(b).flatten(), te.labels.flatten(),
                                                                         n_classes))[1]
                                    for b in sensors if b != s}}
        preds[s] = up
    return out, preds


def label_subset(chips: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Training tiles kept when only ``fraction`` of the labelled *chips* are available (whole chips,
    at least one, drawn once per seed): the same chips for every row, nested as the fraction grows.
    """
    ids = torch.unique(chips)
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    keep = order[: max(1, int(round(fraction * len(ids))))]
    return torch.isin(chips, keep)


def label_budget(tr: Features, te: Features, sensor: str, budgets: list[float], n_classes: int, kind: str,
                 lam: float, patch: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """A sensor's own tasks with a fraction of the training labels: the class-fraction R2, the
    balanced accuracy of the dominant class and the patch-level segmentation mIoU of probes fitted on
    the tiles of that fraction of the training chips, scored on every held-out tile.
    """
    assert tr.labels is not None and te.labels is not None and tr.chip is not None
    ytr, yte = dominant(tr.labels, n_classes), dominant(te.labels, n_classes)
    ptr = patch_labels(tr.labels, patch)
    side = te.labels.shape[-1]
    out: dict[str, dict[str, float]] = {}
    for f in budgets:
        sub = label_subset(tr.chip, f, seed)
        x, xt = tr.kind(kind, sensor)[sub], te.kind(kind, sensor)
        r2 = M.r2(M.ridge(x, fractions(tr.labels[sub], n_classes), lam)(xt), fractions(te.labels, n_classes))
        lab = sub & (ytr >= 0)
        probe = M.linear_probe(tr.kind(kind, sensor)[lab], ytr[lab], n_classes)
        with torch.no_grad():
            bal = M.balanced_accuracy(probe(xt[yte >= 0]).argmax(1), yte[yte >= 0], n_classes)
        tok, yp = tr.patches[sensor][sub].reshape(-1, tr.patches[sensor].shape[-1]), ptr[sub].reshape(-1)
        seg = M.linear_probe(tok[yp >= 0], yp[yp >= 0], n_classes, steps=200)
        with torch.no_grad():
            logits = seg(te.patches[sensor].reshape(-1, tok.shape[-1])).reshape(-1, side // patch, side // patch,
                                                                               n_classes).permute(0, 3, 1, 2)
        up = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False).argmax(1)
        miou = M.iou_from_confusion(M.confusion(up.flatten(), te.labels.flatten(), n_classes))[1]
        out[str(f)] = {"fractions_r2": r2, "balanced_acc": bal, "mIoU": miou, "train_chips": int(
            torch.unique(tr.chip[sub]).numel())}
    return out
