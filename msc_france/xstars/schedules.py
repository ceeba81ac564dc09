"""Cosine schedules with linear warm-up (learning rate, weight decay, EMA momentum)."""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float, warmup: int = 0, warmup_start: float = 0.0) -> float:
    """Value at ``step``: linear from ``warmup_start`` to ``start`` over ``warmup`` steps, then a
    cosine from ``start`` to ``end`` at ``total``.
    """
    if step < warmup:
        return warmup_start + (start - warmup_start) * step / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


def linear_warmup(step: int, warmup: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup`` steps, then ``end`` (teacher temperature)."""
    if step >= warmup:
        return end
    return start + (end - start) * step / max(1, warmup)
