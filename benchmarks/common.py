"""What every benchmark section shares: the repository root, a median timer and the row format.

Sections import this module, never :mod:`benchmarks.run` (which imports the sections).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def median_time(fn: Callable[[], Any], reps: int) -> float:
    """Median wall time of ``fn`` over ``reps`` runs."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def row(name: str, figure: float, unit: str, baseline: float | None, baseline_name: str, target: str,
        higher_is_better: bool = True, met: bool | None = None, note: str = "") -> dict[str, Any]:
    """One result row; ``ratio`` is ours / baseline."""
    ratio = figure / baseline if baseline else None
    return {"name": name, "figure": figure, "unit": unit, "baseline": baseline, "baseline_name": baseline_name,
            "ratio": ratio, "target": target, "met": met, "note": note}
