"""Data sources behind one interface: STAC APIs, local static catalogs and the demo world."""

from __future__ import annotations

import os
from pathlib import Path

from msc_france.config import Catalog, SensorSpec, SourceSpec
from msc_france.errors import BadInputError
from msc_france.paths import cache_dir
from msc_france.sources.base import SearchQuery, Source
from msc_france.sources.demo import DemoSource
from msc_france.sources.signing import Signer, make_signer
from msc_france.sources.stac_api import StacApiSource
from msc_france.sources.static import StaticSource
from msc_france.sources.wms import WmsSource

__all__ = ["SearchQuery", "Source", "make_source", "make_signer", "Signer"]


def make_source(sensor: SensorSpec, catalog: Catalog, use_cache: bool = True, spec: SourceSpec | None = None) -> Source:
    """The backend of one of ``sensor``'s providers (``spec``; default the first), search results of
    remote APIs cached on disk per query.
    """
    spec = spec or sensor.source
    if spec.type == "wms":
        return WmsSource(spec)
    if spec.type == "stac-api":
        return StacApiSource(spec, cache_dir=(cache_dir() / "search") if use_cache else None)
    if spec.type == "static":
        if "://" in (spec.path or ""):  # a catalog on object storage
            return StaticSource(spec, path=str(spec.path))
        p = Path(os.path.expandvars(spec.path or "")).expanduser()  # ~ and $VARS, as a shell would
        return StaticSource(spec, path=p if p.is_absolute() else (catalog.path / p).resolve())
    if spec.type == "demo":
        if catalog.world is None:
            raise BadInputError(f"catalog '{catalog.name}' has demo sources but no _world.yaml")
        return DemoSource(spec, world=catalog.world, world_cache=cache_dir())
    raise BadInputError(f"unsupported source type {spec.type}")
