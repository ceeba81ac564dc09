"""Deterministic hash splits: the same key always lands in the same split, across runs and machines."""

from __future__ import annotations

import hashlib


def unit_hash(key: str) -> float:
    """``key`` mapped uniformly to [0, 1) by sha256 (stable across Python versions and processes)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def assign_split(key: str, fractions: tuple[float, float, float], salt: str) -> str:
    """``train``, ``val`` or ``test`` for ``key``, with the given fractions (they sum to 1)."""
    h = unit_hash(f"{salt}:{key}")
    if h < fractions[0]:
        return "train"
    if h < fractions[0] + fractions[1]:
        return "val"
    return "test"
