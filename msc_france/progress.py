"""Progress reporting: long operations take a :class:`Progress` and the CLI draws it.

The library never prints: it reports work to a ``Progress`` (or ``None``) and logs through the
``msc_france`` loggers; the command line decides what the user sees (``-q``, ``-v``, ``--json``).
"""

from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    """What a long operation reports while it runs."""

    def start(self, total: int) -> None:
        """The operation has ``total`` units of work (chips, files, items)."""

    def advance(self, n: float = 1) -> None:
        """``n`` more units are done (fractions allowed: a chip as each of its sensors is read)."""


class Bar:
    """A tqdm bar on stderr that implements :class:`Progress`; drawn only on a terminal, and never
    when ``enabled`` is False.
    """

    def __init__(self, desc: str, unit: str, enabled: bool = True) -> None:
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self._bar: Any = None

    def start(self, total: int) -> None:
        """Open the bar (shown only when there is work)."""
        from tqdm import tqdm

        self.close()
        # disable=None: tqdm draws only on a terminal, so logs and pipes get no carriage-return noise.
        self._bar = tqdm(total=total, desc=self.desc, unit=self.unit,
                         disable=True if not self.enabled or total == 0 else None,
                         dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} "
                         f"{self.unit}s " "[{elapsed}<{remaining}, {rate_fmt}]")

    def advance(self, n: float = 1) -> None:
        """Move the bar."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
