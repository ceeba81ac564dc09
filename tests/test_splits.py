"""Splits: per chip as before, and spatial blocks with a buffer, checked against hand-made layouts
and an independent sha256 of the documented keys.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest

from msc_france.grid import Chip
from msc_france.splits import BUFFER, SplitRule, assign_split


def _independent_split(key: str, fractions: tuple[float, float, float]) -> str:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "train" if h < fractions[0] else "val" if h < fractions[0] + fractions[1] else "test"


def test_per_chip_rule_is_the_previous_hash_of_the_chip_id() -> None:
    rule = SplitRule((0.6, 0.2, 0.2), "msc-france")
    for col, row in itertools.product(range(290, 300), range(3260, 3270)):
        cid = Chip(1920, col, row).id
        assert rule.split(1920, col, row) == _independent_split(f"msc-france:{cid}", (0.6, 0.2, 0.2))
        assert rule.split(1920, col, row) == assign_split(cid, (0.6, 0.2, 0.2), "msc-france")


def test_blocks_hash_their_documented_key() -> None:
    rule = SplitRule((0.5, 0.25, 0.25), "s", block_chips=3)
    for col, row in itertools.product(range(-4, 8), range(100, 110)):
        want = _independent_split(f"s:block3:960m:{col // 3}:{row // 3}", (0.5, 0.25, 0.25))
        assert rule.block_split(960, col, row) == want == rule.split(960, col, row)  # no buffer


def test_buffer_against_a_hand_drawn_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks of 2 x 2 chips, drawn by hand (row 0 at the top here; rows are y, cols are x):
    #   T T V
    #   T E T      T train, V val, E test
    #   V T T
    blocks = ["TTV", "TET", "VTT"]
    name = {"T": "train", "V": "val", "E": "test"}

    def fake(self: SplitRule, size_m: int, col: int, row: int) -> str:
        bc, br = col // 2, row // 2
        if 0 <= bc < 3 and 0 <= br < 3:
            return name[blocks[br][bc]]
        return "train"  # all around: training ground

    monkeypatch.setattr(SplitRule, "block_split", fake)
    rule = SplitRule((0.6, 0.2, 0.2), "x", block_chips=2, buffer_chips=1)
    got = ["".join({"train": "T", "val": "V", "test": "E", BUFFER: "."}[rule.split(960, c, r)] for c in range(6))
           for r in range(6)]
    # By hand: a held-out chip with a higher-ranked chip (train > val > test) within one chip,
    # diagonals included, becomes buffer. Every val and test block touches training ground,
    # so each keeps no chip; the test block touches train on every side.
    assert got == [
        "TTTT..",
        "TTTT..",
        "TT..TT",
        "TT..TT",
        "..TTTT",
        "..TTTT",
    ]
    # A 4 x 4 val block inside training ground keeps its inner 2 x 2 chips.
    blocks = ["TTTT", "TVVT", "TVVT", "TTTT"]
    rule2 = SplitRule((0.6, 0.2, 0.2), "x", block_chips=2, buffer_chips=1)
    kept = [(c, r) for c in range(8) for r in range(8) if rule2.split(960, c, r) == "val"]
    assert sorted(kept) == [(3, 3), (3, 4), (4, 3), (4, 4)]


def test_blocked_splits_keep_their_distance_on_a_large_grid() -> None:
    rule = SplitRule((0.6, 0.2, 0.2), "msc-france", block_chips=4, buffer_chips=1)
    n = 48
    grid = {(c, r): rule.split(1920, c, r) for c in range(n) for r in range(n)}
    counts = {s: sum(v == s for v in grid.values()) for s in ("train", "val", "test", BUFFER)}
    assert all(counts[s] > 0 for s in counts), counts
    for (c, r), s in grid.items():
        if s == BUFFER:
            continue
        for dc, dr in itertools.product((-1, 0, 1), repeat=2):
            other = grid.get((c + dc, r + dr))
            assert other in (None, s, BUFFER), f"{s} chip ({c},{r}) touches {other}"
    # Every non-buffer chip of a block shares the block's split.
    for (c, r), s in grid.items():
        if s != BUFFER:
            assert s == rule.block_split(1920, c, r)


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="block_chips"):
        SplitRule((0.6, 0.2, 0.2), "x", block_chips=0)
    with pytest.raises(ValueError, match="buffer_chips"):
        SplitRule((0.6, 0.2, 0.2), "x", buffer_chips=-1)
