"""What a training run reports: one :class:`StepRecord` per step (the lines of ``log.jsonl``, and
what a progress callback receives) and a :class:`TrainSummary` at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepRecord:
    """One optimiser step, as logged."""

    step: int
    loss: float
    dino: float
    msad: float
    alpha: float
    lr: float
    wd: float
    momentum: float
    teacher_temp: float
    dino_sensor: str
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        """A line of ``log.jsonl``."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StepRecord:
        """Parse a line of ``log.jsonl``."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


Progress = Callable[[StepRecord, int], None]
"""A progress callback: called after every step with its record and the run's total steps."""


@dataclass(frozen=True)
class TrainSummary:
    """The outcome of :func:`~msc_france.xstars.train.pretrain`.

    Attributes:
        steps: steps trained by this call (after a resume, the remaining ones).
        start: the step it started from (0, or the resumed checkpoint's).
        losses: the total loss of every step trained.
        elapsed_s: wall time of the loop.
        images_per_s: DINO images per second, every rank together.
        out: the run directory.
        device: where it trained.
    """

    steps: int
    start: int
    losses: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    out: str = ""
    device: str = "cpu"

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        first = f"{self.losses[0]:.4f}" if self.losses else "-"
        last = f"{self.losses[-1]:.4f}" if self.losses else "-"
        return (f"trained steps {self.start}..{self.start + self.steps} on {self.device} in {self.elapsed_s:.1f} s "
                f"({self.images_per_s:.1f} images/s); loss {first} -> {last}; run in {self.out}")

    def to_json(self) -> dict[str, Any]:
        """Plain values (``--json`` output, benchmarks)."""
        return asdict(self)


def print_progress(rec: StepRecord, total: int) -> None:
    """The CLI's progress callback: one line per step."""
    print(f"step {rec.step + 1}/{total} loss {rec.loss:.4f} (dino {rec.dino:.4f}, msad {rec.msad:.4f})", flush=True)
