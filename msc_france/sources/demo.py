"""The demo-world backend: generates the world on first use, then searches it like a static catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pystac

from msc_france.config import DemoWorldSpec
from msc_france.sources.demo_world import ensure_world
from msc_france.sources.static import StaticSource


@dataclass
class DemoSource(StaticSource):
    """Items of the generated demo world (one item collection per STAC collection)."""

    world: DemoWorldSpec | None = None
    world_cache: Path = field(default=Path("."))

    @property
    def identity(self) -> str:
        """``demo:`` plus the world directory."""
        return f"demo:{self.world_cache}"

    def items(self) -> list[pystac.Item]:
        """Generate the world if needed and load this collection's items."""
        if self._items is None:
            assert self.world is not None
            world_dir = ensure_world(self.world, self.world_cache)
            self.path = world_dir / f"{self.spec.collection}.json"
        return super().items()
