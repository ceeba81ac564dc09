"""The data-source interface: search items for a query; turn an href into a readable one."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pystac
from shapely.geometry import box, shape

from msc_france.config import SourceSpec
from msc_france.fsutil import atomic_path


@dataclass(frozen=True)
class SearchQuery:
    """What to search: a collection, a WGS84 bbox, a date window and item-property filters."""

    collection: str
    bbox: tuple[float, float, float, float]
    start: dt.date
    end: dt.date
    properties: tuple[tuple[str, str | int | float], ...] = ()
    max_cloud_cover: float | None = None
    cloud_cover_property: str | None = None

    @property
    def datetime_range(self) -> str:
        """RFC 3339 interval covering whole days, as STAC APIs expect."""
        return f"{self.start.isoformat()}T00:00:00Z/{self.end.isoformat()}T23:59:59Z"

    def key(self, backend: str) -> str:
        """A stable hash of the query and the backend identity, for the on-disk cache."""
        payload = json.dumps({"backend": backend, **asdict(self)}, default=str, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]


def item_matches(item: pystac.Item, q: SearchQuery) -> bool:
    """The in-process filter every backend applies (static catalogs rely on it entirely).

    STAC APIs do not all support the ``query`` extension (rustac silently ignores it), so
    property and cloud filters are always re-checked here.
    """
    if item.collection_id not in (None, q.collection):
        return False
    props = item.properties
    for k, v in q.properties:
        if props.get(k) != v:
            return False
    if q.max_cloud_cover is not None and q.cloud_cover_property:
        cc = props.get(q.cloud_cover_property)
        if cc is not None and float(cc) > q.max_cloud_cover:
            return False
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        return False
    day = when.date()
    if not (q.start <= day <= q.end):
        return False
    if item.geometry is None:
        return False
    return shape(item.geometry).intersects(box(*q.bbox))


@dataclass
class Source(ABC):
    """One backend: a STAC API, a local static catalog, or the demo world."""

    spec: SourceSpec
    cache_dir: Path | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"searches": 0, "cache_hits": 0})

    @property
    @abstractmethod
    def identity(self) -> str:
        """A string naming the backend (URL or path) for cache keys and messages."""

    @abstractmethod
    def _search(self, q: SearchQuery) -> list[pystac.Item]:
        """Run the search against the backend (no cache)."""

    def search(self, q: SearchQuery) -> list[pystac.Item]:
        """Items matching ``q``, sorted by datetime then id; cached on disk per query when enabled."""
        cached = self._cache_path(q)
        if cached is not None and cached.exists():
            self.stats["cache_hits"] += 1
            return list(pystac.ItemCollection.from_file(str(cached)))
        self.stats["searches"] += 1
        items = [it for it in self._search(q) if item_matches(it, q)]
        items.sort(key=lambda it: (it.datetime or dt.datetime.min.replace(tzinfo=dt.UTC), it.id))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp:  # a killed process never leaves a half-written cache entry
                tmp.write_text(json.dumps(pystac.ItemCollection(items).to_dict(transform_hrefs=False)))
        return items

    def _cache_path(self, q: SearchQuery) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{q.collection}-{q.key(self.identity)}.json"
