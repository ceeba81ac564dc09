"""Deterministic splits: the same key always lands in the same split, across runs and machines.

Two rules share one hash:

* per chip (``block_chips: 1``, the default): each chip's id is hashed on its own. Neighbouring
  chips land in different splits, so a held-out chip usually shares an edge with a training chip
  (its ground continues across the edge: fields, roads and towns leak between splits).
* spatial blocks (``block_chips: k > 1``): the Lambert-93 chip grid is cut into ``k x k`` blocks
  anchored at the grid origin, and each block is hashed; every chip of a block shares its split.
  ``buffer_chips: b`` then takes every chip within ``b`` chips (Chebyshev distance) of a chip of a
  split that ranks higher (train > val > test) out of every split, into :data:`BUFFER`: training
  and held-out ground are at least ``b`` chips apart, and so are val and test.

A chip's split depends only on its grid position and the rule, never on which other chips a store
holds, so appending a region keeps every existing chip's split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from msc_france.grid import Chip

#: The splits a chip can be in, in the order that decides who gives way to a buffer.
SPLITS = ("train", "val", "test")
#: Chips of no split: the gap between blocked splits.
BUFFER = "buffer"
ALL_SPLITS = (*SPLITS, BUFFER)
_RANK = {s: i for i, s in enumerate(SPLITS)}  # lower ranks higher: train keeps its chips


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


@dataclass(frozen=True)
class SplitRule:
    """How chips of one chip size are assigned to splits (see the module docstring).

    Attributes:
        fractions: train, val, test fractions of blocks (of chips when ``block_chips`` is 1).
        salt: hash salt; another salt gives another, equally random split.
        block_chips: block side in chips; 1 hashes every chip on its own.
        buffer_chips: width of the buffer between splits, in chips.
    """

    fractions: tuple[float, float, float]
    salt: str
    block_chips: int = 1
    buffer_chips: int = 0

    def __post_init__(self) -> None:
        if self.block_chips < 1 or self.buffer_chips < 0:
            raise ValueError("block_chips must be >= 1 and buffer_chips >= 0")

    def block_split(self, size_m: int, col: int, row: int) -> str:
        """The split of the block holding chip (col, row), before any buffer is taken."""
        if self.block_chips == 1:  # the per-chip rule, keyed by the chip id as it always was
            return assign_split(Chip(size_m, col, row).id, self.fractions, self.salt)
        k = self.block_chips
        return assign_split(f"block{k}:{size_m}m:{col // k}:{row // k}", self.fractions, self.salt)

    def split(self, size_m: int, col: int, row: int) -> str:
        """The split of chip (col, row) of the ``size_m`` grid: a name of :data:`ALL_SPLITS`."""
        own = self.block_split(size_m, col, row)
        b = self.buffer_chips
        for dr in range(-b, b + 1):
            for dc in range(-b, b + 1):
                other = self.block_split(size_m, col + dc, row + dr)
                if _RANK[other] < _RANK[own]:
                    return BUFFER
        return own
