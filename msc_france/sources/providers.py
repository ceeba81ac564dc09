"""A sensor's providers searched in order and merged: one item per acquisition, the first provider's.

Planetary Computer has had weeks-long gaps (its issues #376, #381, #433, #438); Earth Search serves
the same Sentinel-2 and Landsat scenes. Each provider of a sensor is searched; an acquisition served
by several (the product rules' :meth:`~msc_france.products.base.ProductRules.scene_key`: tile and
time for Sentinel-2, USGS's scene id for Landsat) is kept once, from the first provider listing it,
with the other copies attached (``msc_france:alternates``) for the build to read when the first
provider's files cannot be. A provider that fails is named and left out; only when every provider
fails does the search fail.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import pystac

from msc_france.config import Catalog, SensorSpec
from msc_france.errors import SourceError
from msc_france.products import rules_for
from msc_france.products.base import ALTERNATES, PROVIDER
from msc_france.sources import SearchQuery, make_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderSearch:
    """The merged items of one sensor, and what each provider gave."""

    items: list[pystac.Item]
    found: dict[str, int]  # provider -> items it returned
    kept: dict[str, int]  # provider -> acquisitions taken from it
    failed: dict[str, str]  # provider -> why its search failed

    @property
    def duplicates(self) -> int:
        """Acquisitions served by more than one provider (kept once)."""
        return sum(self.found.values()) - sum(self.kept.values())


def search_providers(sensor: SensorSpec, catalog: Catalog, q: SearchQuery, use_cache: bool = True) -> ProviderSearch:
    """Search every provider of ``sensor`` (module docstring).

    Raises:
        SourceError: every provider failed (each one's reason, in order).
    """
    rules = rules_for(sensor.product)
    kept: dict[str, pystac.Item] = {}
    found: dict[str, int] = {}
    failed: dict[str, str] = {}
    for spec in sensor.sources:
        try:
            items = make_source(sensor, catalog, use_cache=use_cache, spec=spec).search(q)
        except SourceError as e:
            if len(sensor.sources) == 1:
                raise
            failed[spec.provider] = str(e)
            continue
        found[spec.provider] = len(items)
        for it in items:
            key = rules.scene_key(it.to_dict(transform_hrefs=False))
            first = kept.get(key)
            if first is None:
                kept[key] = it
            else:  # the same scene again: a fallback for the first provider's copy
                first.properties.setdefault(ALTERNATES, []).append(it.to_dict(transform_hrefs=False))
    if len(failed) == len(sensor.sources):
        raise SourceError(f"every provider of {sensor.name} failed: "
                          + "; ".join(f"{p}: {why}" for p, why in failed.items()))
    for p, why in failed.items():
        log.warning(f"{sensor.name}: provider {p} failed, the others serve its chips: {why}")
    merged = sorted(kept.values(), key=lambda it: (it.datetime or dt.datetime.min.replace(tzinfo=dt.UTC), it.id))
    per: dict[str, int] = {}
    for it in merged:
        p = str(it.properties.get(PROVIDER))
        per[p] = per.get(p, 0) + 1
    return ProviderSearch(merged, found, per, failed)


__all__ = ["ProviderSearch", "search_providers"]
