"""Metrics against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from msc_france.eval import metrics as M


def test_retrieval_ranks_hand_case() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    g = torch.tensor([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0]])
    # query 0 -> true g0 (cos .995) but g1 is 1.0: rank 2; query 1 -> g1 (cos 0): below g2 and g0: rank 3;
    # query 2 -> g2 (cos 1.0): rank 1.
    ranks = M.retrieval_ranks(q, g)
    assert ranks.tolist() == [2, 3, 1]
    m = M.retrieval_metrics(ranks)
    assert m["R@1"] == pytest.approx(1 / 3) and m["R@5"] == 1.0 and m["median_rank"] == 2 and m["n"] == 3


def test_ties_count_against_the_match() -> None:
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0]])
    assert M.retrieval_ranks(torch.cat([q, q]), torch.cat([g, g])).tolist() == [2, 2]


def test_knn_on_separable_points() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    y = torch.arange(3).repeat_interleave(20)
    x = centres[y] + 0.3 * torch.randn(60, 3, generator=g)
    yt = torch.arange(3).repeat_interleave(5)
    xt = centres[yt] + 0.3 * torch.randn(15, 3, generator=g)
    assert torch.equal(M.knn_predict(x, y, xt, 3, k=5), yt)
    probe = M.linear_probe(x, y, 3)
    assert torch.equal(probe(xt).argmax(1), yt)


def test_confusion_and_iou_hand_case() -> None:
    target = torch.tensor([0, 0, 1, 1, 2, -1])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = M.confusion(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    ious, miou = M.iou_from_confusion(cm)
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0, fn 1 -> 0
    assert ious == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert miou == pytest.approx(1 / 3)


def test_absent_class_is_not_averaged() -> None:
    cm = M.confusion(torch.tensor([0, 0]), torch.tensor([0, 0]), 3)
    ious, miou = M.iou_from_confusion(cm)
    assert ious == [1.0, None, None] and miou == 1.0


def test_balanced_accuracy_and_macro_f1_hand_case() -> None:
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 0])
    # recalls: class 0 3/4, class 1 1/2, class 2 0 -> balanced 0.4167
    assert M.balanced_accuracy(pred, target, 3) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    # F1: class 0: tp 3, fp 2, fn 1 -> 6/9; class 1: tp 1, fp 1, fn 1 -> 0.5; class 2: tp 0, fn 1 -> 0
    assert M.macro_f1(pred, target, 3) == pytest.approx((6 / 9 + 0.5 + 0.0) / 3)
    # Always predicting the majority class: accuracy 4/7 but balanced accuracy 1/3.
    maj = torch.zeros_like(target)
    assert M.accuracy(maj, target) == pytest.approx(4 / 7) and M.balanced_accuracy(maj, target, 3) == pytest.approx(1 / 3)


def test_ridge_recovers_a_linear_map_and_r2() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 1.0], [2.0, 0.3], [0.0, 0.0]])
    y = x @ w + 3.0
    model = M.ridge(x, y, lam=1e-8)
    assert torch.allclose(model(x).float(), y, atol=1e-4)
    assert M.r2(model(x), y) == pytest.approx(1.0, abs=1e-8)
    # Predicting the mean scores 0; a heavily regularised ridge shrinks towards it.
    assert M.r2(y.mean(0, keepdim=True).expand_as(y), y) == pytest.approx(0.0, abs=1e-9)
    assert 0 < M.r2(M.ridge(x, y, lam=10.0)(x), y) < 0.5
    # Hand case: SSE = 1 + 1 = 2, SST = (1 + 1) per output over two outputs ... 1 - 2 / 4 = 0.5
    t = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    p = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    assert M.r2(p, t) == pytest.approx(0.5)
