"""Local static catalogs and item collections, searched in-process.

pystac-client cannot search a static catalog (it has no ``/search``), so items are loaded once
with pystac and filtered by collection, bbox, datetime and properties here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pystac

from msc_france.errors import SourceError
from msc_france.sources.base import SearchQuery, Source


def load_items(path: Path) -> list[pystac.Item]:
    """Read items from a static catalog/collection JSON (recursively), an ItemCollection, or NDJSON."""
    if not path.exists():
        raise SourceError(f"static catalog not found: {path}")
    try:
        if path.suffix == ".ndjson":
            with open(path, encoding="utf-8") as f:
                return [pystac.Item.from_dict(json.loads(line)) for line in f if line.strip()]
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("type") == "FeatureCollection":
            return list(pystac.ItemCollection.from_dict(d))
        obj = pystac.read_file(str(path))
        if isinstance(obj, pystac.Item):
            return [obj]
        items = list(obj.get_items(recursive=True))  # type: ignore[union-attr]
        for it in items:
            it.make_asset_hrefs_absolute()
        return items
    except (OSError, ValueError, KeyError, pystac.STACError) as e:
        raise SourceError(f"cannot read static catalog {path}: {str(e).splitlines()[0]}") from None


@dataclass
class StaticSource(Source):
    """Items of a local static STAC catalog, item collection or NDJSON file."""

    path: Path = field(default=Path("."))
    _items: list[pystac.Item] | None = field(default=None, repr=False)

    @property
    def identity(self) -> str:
        """The catalog path."""
        return str(self.path)

    def items(self) -> list[pystac.Item]:
        """All items of the catalog (loaded once)."""
        if self._items is None:
            self._items = load_items(self.path)
        return self._items

    def _search(self, q: SearchQuery) -> list[pystac.Item]:
        return self.items()
