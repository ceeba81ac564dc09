"""The data-source interface: search items for a query; turn an href into a readable one."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pystac
import shapely
from shapely.geometry import box, shape

from msc_france.config import SourceSpec
from msc_france.errors import first_line, printable
from msc_france.fsutil import atomic_path
from msc_france.products.base import PROVIDER

log = logging.getLogger(__name__)


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


def geometry_problem(item: pystac.Item, spec: SourceSpec) -> str | None:
    """Why an item's footprint cannot be planned with (None when it can): not a polygon, not finite,
    outside longitude/latitude ranges, wider than ``spec.max_item_extent_deg`` or with more than
    ``spec.max_item_vertices`` vertices. Planning densifies footprints: a footprint 1e6 degrees wide
    would take gigabytes.
    """
    g = item.geometry
    if not isinstance(g, dict) or g.get("type") not in ("Polygon", "MultiPolygon"):
        return "footprint is not a Polygon or MultiPolygon"
    try:
        geom = shape(g)
    except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.GEOSException) as e:
        return f"footprint is not a valid geometry ({first_line(e)})"
    n = shapely.get_num_coordinates(geom)
    if n > spec.max_item_vertices:
        return f"footprint has {n} vertices, more than the source's max_item_vertices ({spec.max_item_vertices})"
    if geom.is_empty or not np.isfinite(shapely.get_coordinates(geom)).all():
        return "footprint is empty or has non-finite coordinates"
    x0, y0, x1, y1 = geom.bounds
    if x0 < -180 or x1 > 180 or y0 < -90 or y1 > 90:
        return f"footprint {x0:g},{y0:g},{x1:g},{y1:g} is outside longitude/latitude ranges"
    if max(x1 - x0, y1 - y0) > spec.max_item_extent_deg:
        return (f"footprint spans {max(x1 - x0, y1 - y0):g} degrees, more than the source's max_item_extent_deg "
                f"({spec.max_item_extent_deg:g})")
    return None


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


def as_ours(item: pystac.Item, spec: SourceSpec) -> pystac.Item:
    """``item`` with its assets under our keys (``spec.assets``: ours -> the provider's) and the
    provider's name in its properties: everything downstream reads one vocabulary, and each item
    knows whose rules (href policy, signing, GDAL settings) read it.
    """
    if spec.assets:
        theirs = {v: k for k, v in spec.assets.items()}
        item.assets = {theirs.get(k, k): a for k, a in item.assets.items() if k not in spec.assets or k in theirs}
    if spec.alternate_href:
        for a in item.assets.values():
            alt = (a.extra_fields.get("alternate") or {}).get(spec.alternate_href) or {}
            if isinstance(alt, dict) and isinstance(alt.get("href"), str):
                a.href = alt["href"]
    item.properties[PROVIDER] = spec.provider
    return item


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
        """Items matching ``q``, sorted by datetime then id, in our asset keys and naming their
        provider (:func:`as_ours`); cached on disk per query when enabled.
        """
        return [as_ours(it, self.spec) for it in self._search_cached(q)]

    def _search_cached(self, q: SearchQuery) -> list[pystac.Item]:
        cached = self._cache_path(q)
        if cached is not None and cached.exists():
            self.stats["cache_hits"] += 1
            return list(pystac.ItemCollection.from_file(str(cached)))
        self.stats["searches"] += 1
        items = []
        for it in self._search(q):
            problem = geometry_problem(it, self.spec)
            if problem is not None:  # one broken item never fails a search: it is named and left out
                self.stats["bad_items"] = self.stats.get("bad_items", 0) + 1
                log.warning(f"item {printable(str(it.id))} left out: {problem}")
                continue
            if item_matches(it, q):
                items.append(it)
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
