"""Metrics and frozen-feature classifiers: retrieval ranks, kNN, linear probes, confusion-based IoU."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def retrieval_ranks(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's true match (same index) in the gallery, by cosine similarity.

    Ties are broken pessimistically (a tie with the true match counts against it).
    """
    q = F.normalize(queries.float(), dim=-1)
    g = F.normalize(gallery.float(), dim=-1)
    sim = q @ g.T
    true = sim.diagonal()[:, None]
    return (sim >= true).sum(dim=1)


def retrieval_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k and median rank from the ranks of :func:`retrieval_ranks`."""
    out = {f"R@{k}": float((ranks <= k).float().mean()) for k in ks}
    out["median_rank"] = float(ranks.float().median())
    out["n"] = int(ranks.numel())
    return out


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, n_classes: int,
                k: int = 10, temperature: float = 0.07) -> torch.Tensor:
    """Weighted kNN on cosine similarity (DINO's protocol): votes weighted by exp(sim / T)."""
    a = F.normalize(train_x.float(), dim=-1)
    b = F.normalize(test_x.float(), dim=-1)
    sim = b @ a.T
    k = min(k, a.shape[0])
    top, idx = sim.topk(k, dim=1)
    w = (top / temperature).exp()
    votes = torch.zeros(b.shape[0], n_classes)
    votes.scatter_add_(1, train_y[idx], w)
    return votes.argmax(dim=1)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, n_classes: int, weight_decay: float = 1e-3,
                 steps: int = 300, seed: int = 0) -> torch.nn.Module:
    """A multinomial logistic regression on standardised frozen features (full-batch L-BFGS).

    Returns a module mapping raw features to logits (standardisation included).
    """
    torch.manual_seed(seed)
    mu = train_x.float().mean(0, keepdim=True)
    sd = train_x.float().std(0, keepdim=True).clamp_min(1e-6)
    x = (train_x.float() - mu) / sd
    lin = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), train_y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)

    class Probe(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return lin((z.float() - mu) / sd)

    return Probe().eval()


def confusion(pred: torch.Tensor, target: torch.Tensor, n_classes: int, ignore: int = -1) -> torch.Tensor:
    """Confusion matrix (rows: truth, columns: prediction), ignoring ``ignore`` targets."""
    keep = target != ignore
    idx = target[keep] * n_classes + pred[keep]
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_from_confusion(cm: torch.Tensor) -> tuple[list[float | None], float]:
    """Per-class IoU (None for classes absent from truth and prediction) and their mean."""
    cm = cm.double()
    tp = cm.diagonal()
    denom = cm.sum(0) + cm.sum(1) - tp
    ious = [float(t / d) if d > 0 else None for t, d in zip(tp, denom, strict=True)]
    present = [v for v in ious if v is not None]
    return ious, float(np.mean(present)) if present else 0.0


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of correct predictions."""
    return float((pred == target).float().mean()) if target.numel() else float("nan")


def balanced_accuracy(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> float:
    """Mean per-class recall over the classes present in ``target``."""
    recalls = [float((pred[target == c] == c).float().mean()) for c in range(n_classes) if (target == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def macro_f1(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> float:
    """Unweighted mean F1 over the classes present in ``target`` or ``pred``."""
    f1s = []
    for c in range(n_classes):
        tp = int(((pred == c) & (target == c)).sum())
        fp = int(((pred == c) & (target != c)).sum())
        fn = int(((pred != c) & (target == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


def ridge(train_x: torch.Tensor, train_y: torch.Tensor, lam: float = 1.0) -> torch.nn.Module:
    """Ridge regression on standardised features (closed form); returns a module x -> y.

    ``lam`` is scaled by the number of training samples, so it means the same for any set size.
    """
    x = train_x.double()
    mu, sd = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
    z = (x - mu) / sd
    y = train_y.double()
    ym = y.mean(0, keepdim=True)
    a = z.T @ z + lam * z.shape[0] * torch.eye(z.shape[1], dtype=z.dtype)
    w = torch.linalg.solve(a, z.T @ (y - ym))

    class Ridge(torch.nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return ((q.double() - mu) / sd) @ w + ym

    return Ridge().eval()


def r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Coefficient of determination over all outputs (variance-weighted, as sklearn's
    ``r2_score(..., multioutput="variance_weighted")``): 1 - SSE / SST.
    """
    t = target.double()
    sse = ((pred.double() - t) ** 2).sum()
    sst = ((t - t.mean(0, keepdim=True)) ** 2).sum()
    return float(1 - sse / sst) if sst > 0 else float("nan")
