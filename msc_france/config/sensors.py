"""Sensor catalogs: what each sensor is (bands, product rules, store encoding) and where its items
come from (the source), one YAML per sensor in a catalog directory; the demo world's spec.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from msc_france.config.base import StrictModel, check_name, load_yaml, parse_model
from msc_france.errors import BadInputError
from msc_france.paths import catalogs_dir

if TYPE_CHECKING:
    from msc_france.store.schema import SensorFacts


class BandSpec(StrictModel):
    """One band of a sensor: our name, the STAC asset holding it and the band index inside it."""

    name: str
    asset: str
    index: int | None = Field(
        None, ge=1, description="1-based band index inside the asset file (default: found by name in its eo:bands)"
    )
    common_name: str | None = None


class WmsDates(StrictModel):
    """How a WMS source dates its imagery, rules tried in order (see :mod:`msc_france.sources.wms`).

    ``capabilities``: a ``time`` Dimension (or a ``date:YYYY-MM-DD`` keyword) of the layer in the
    service's capabilities. ``features``: a WFS 2.0 layer of acquisition-date polygons (IGN's
    mosaic graph, a user's own layer), one item per polygon. ``survey``: a GeoJSON/GeoPackage of
    survey zones (e.g. départements) with a year. Otherwise the chip is dated with the recipe's
    target date and says so (``season``).
    """

    capabilities: bool = True
    features_url: str | None = Field(None, description="WFS endpoint of a layer of acquisition-date polygons")
    features_type: str | None = Field(None, description="its type name (WFS TYPENAMES)")
    features_date: str = Field("date", description="the feature property holding the date (ISO date or year)")
    max_features: int = Field(5000, ge=1, le=100_000, description="features accepted per search")
    survey_file: str | None = Field(None, description="GeoJSON/GeoPackage of survey zones (WGS84 or any CRS)")
    survey_year: str = Field("year", description="the zone property holding the survey year")

    @model_validator(mode="after")
    def _check(self) -> WmsDates:
        if (self.features_url is None) != (self.features_type is None):
            raise ValueError("dates.features_url and dates.features_type go together")
        return self


class WmsSpec(StrictModel):
    """An OGC WMS 1.3.0 raster service read chip by chip (type ``wms``).

    Each chip is requested on its own grid in ``crs`` (bbox = chip bounds, no reprojection) at
    ``request_gsd`` and area-averaged locally to the store's GSD.
    """

    layers: dict[str, str] = Field(min_length=1, description="asset key -> WMS layer name (one request each)")
    formats: list[str] = Field(
        default_factory=lambda: ["image/geotiff", "image/tiff", "image/png", "image/jpeg"],
        min_length=1, description="formats in order of preference; the first the service offers is used "
        "(lossless ones first: a JPEG's blocks would be averaged into the chip)")
    crs: str = Field("EPSG:2154", description="request CRS: the chip grid's, so the server never reprojects")
    request_gsd: float | None = Field(
        None, gt=0, description="metres per requested pixel (default: a fifth of the store's GSD, not finer than "
        "native_gsd; docs/sources.md measures the choice)")
    max_requests_per_s: float = Field(40.0, gt=0, description="the service's published rate limit, per process")
    transparent: bool = Field(True, description="ask for an alpha band: where it is 0 the service has no data")
    max_response_bytes: int = Field(256 * 2**20, ge=2**16, description="bytes of one GetMap answer")
    max_size: int | None = Field(None, ge=16, description="pixels per side of one request (default: the "
                                 "capabilities' MaxWidth/MaxHeight, else 4096); larger chips are tiled")
    dates: WmsDates = WmsDates()


class SourceSpec(StrictModel):
    """Where a sensor's items come from: one provider."""

    type: Literal["stac-api", "static", "demo", "wms"]
    collection: str
    name: str | None = Field(None, description="the provider's name in chip records (default: from its type and "
                             "host, e.g. 'stac-api:planetarycomputer.microsoft.com')")
    assets: dict[str, str] = Field(
        default_factory=dict, description="our asset key -> this provider's asset key, where they differ "
        "(Earth Search names Sentinel-2's B02 'blue'); items are renamed when found")
    wms: WmsSpec | None = Field(None, description="the service's layers and request rules (type wms)")
    alternate_href: str | None = Field(
        None, description="read each asset's ``alternate.<name>.href`` instead of its href (Earth Search's "
        "Landsat: 's3', the requester-pays bucket; its https hrefs need a USGS login)")
    url: str | None = Field(None, description="STAC API root URL (type stac-api)")
    path: str | None = Field(
        None, description="static catalog/item collection path, relative to the catalog dir or absolute"
    )
    signing: Literal["none", "planetary-computer"] = "none"
    properties: dict[str, str | int | float] = Field(
        default_factory=dict, description="exact-match item property filters, e.g. platform: landsat-8"
    )
    timeout_s: float = Field(20.0, gt=0, description="per read (connect and each chunk)")
    response_deadline_s: float = Field(120.0, gt=0, description="whole HTTP response, however it trickles")
    search_deadline_s: float = Field(900.0, gt=0, description="whole search, all pages and retries")
    max_pages: int = Field(2000, ge=1, description="pages followed per search")
    max_items: int = Field(200_000, ge=1, description="items accepted per search")
    max_retries: int = Field(3, ge=0)
    page_size: int = Field(250, ge=1, le=1000)
    allowed_hosts: list[str] | None = Field(
        None, description="asset hosts the source may point at (None: any public host)")
    allow_private_hosts: bool = Field(
        False, description="accept asset hrefs on loopback/private addresses (local servers, tests)")
    max_bands: int = Field(64, ge=1, description="bands a source file may declare (a crafted file declaring "
                           "thousands makes every read that large)")
    max_block_bytes: int = Field(256 * 2**20, ge=2**16, description="decompressed bytes of one tile or strip "
                                 "of a source file (any read decodes at least one whole block)")
    max_item_extent_deg: float = Field(20.0, gt=0, le=360, description="width and height of an item's "
                                       "footprint in degrees (scenes span 1-3)")
    max_item_vertices: int = Field(100_000, ge=4, description="vertices of an item's footprint")
    gdal: dict[str, str] = Field(
        default_factory=dict, description="GDAL settings for this source's reads (GDAL_*, CPL_*, VSI_*), on top of "
        "the build's; e.g. CPL_VSIL_CURL_USE_HEAD: 'NO' for a service whose signed URLs allow GET only")

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, v: str) -> str:
        return check_name(v, "collection id")  # it names cache files

    @field_validator("gdal")
    @classmethod
    def _gdal_keys(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not k.startswith(("GDAL_", "CPL_", "VSI_", "AWS_", "AZURE_", "GS_"))]
        if bad:
            raise ValueError(f"not a GDAL setting: {', '.join(bad)}")
        return v

    @model_validator(mode="after")
    def _check_location(self) -> SourceSpec:
        if self.type == "stac-api" and not self.url:
            raise ValueError("a stac-api source needs 'url'")
        if self.type == "static" and not self.path:
            raise ValueError("a static source needs 'path'")
        if self.type == "wms" and (not self.url or self.wms is None):
            raise ValueError("a wms source needs 'url' and 'wms'")
        if self.type != "wms" and self.wms is not None:
            raise ValueError("'wms' is for sources of type wms")
        return self

    @property
    def provider(self) -> str:
        """The provider's name, as chip records and the index give it."""
        if self.name:
            return self.name
        from urllib.parse import urlparse

        where = urlparse(self.url).hostname if self.url else None
        return f"{self.type}:{where or self.collection}"


class MaskSpec(StrictModel):
    """A quality asset the valid/clear mask is derived from, decoded by the sensor's product rules."""

    asset: str
    type: str = Field(description="the decoding, named by the sensor's product (its ``mask_types``: scl, "
                      "qa_pixel, maja-clm, ...); the product checks it")


class ValueMapping(StrictModel):
    """Source values -> physical values (physical = value * scale + offset), used when an item's
    ``raster:bands`` declare no scale/offset (plain rasters: aerial, SPOT, labels).
    """

    scale: float = 1.0
    offset: float = 0.0


class SensorSpec(StrictModel):
    """A sensor source, loaded from one YAML file of a catalog directory."""

    name: str
    title: str
    kind: Literal["reflectance", "labels"] = "reflectance"
    sources: list[SourceSpec] = Field(
        min_length=1, description="providers tried in order (a YAML may give one as 'source')")
    native_gsd: float = Field(gt=0)
    default_gsd: float = Field(gt=0, description="GSD the store holds this sensor at, unless the recipe overrides it")
    product: str = Field("raster", description="product rules that read its items (msc_france.products, which "
                         "checks the name and the masks: msc_france.products.check_catalog)")
    nodata: float | None = Field(
        0, description="source nodata used when neither the file nor the item declares one (None: none)"
    )
    bands: list[BandSpec] = Field(min_length=1)
    masks: list[MaskSpec] = Field(default_factory=list)
    values: ValueMapping = ValueMapping()
    # How physical values are stored: physical = stored * scale + offset (CF packing).
    dtype: Literal["uint8", "uint16"]
    scale: float = Field(1.0, gt=0, description="store packing scale (1e-4: reflectance x 10000)")
    offset: float = 0.0
    valid_range: tuple[int, int] | None = Field(
        None, description="stored values allowed for data (default: 1..max when scaled, 0..max otherwise)"
    )
    out_of_range: Literal["clip", "error"] = Field(
        "clip", description="a value outside valid_range: clip it and count it, or refuse the chip"
    )
    cloud_cover_property: str | None = "eo:cloud_cover"
    resampling: Literal["nearest", "bilinear", "cubic", "average"] = "bilinear"
    rgb: list[str] = Field(default_factory=list, description="band names used for RGB previews/exports")
    classes: dict[int, str] | None = Field(None, description="class value -> name, for label sensors")
    provenance: str = Field("not stated", description="where its pixels come from (producer, distributor): "
                            "dataset and model cards")
    licence: str = Field("not stated", description="the data licence: dataset and model cards")
    display_name: str | None = Field(None, description="a short name (folders of the X-STARS PNG export); "
                                     "default: the sensor name")
    class_colors: dict[int, str] | None = Field(None, description="class value -> #rrggbb, for label sensors")

    def facts(self) -> SensorFacts:
        """What the store records of this sensor in its group's attributes."""
        from msc_france.store.schema import SensorFacts

        return SensorFacts(self.title, self.provenance, self.licence, self.display_name or self.name,
                           dict(self.class_colors or {}))

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, data: Any) -> Any:
        """``source: {...}`` (one provider, as every catalog before providers) is ``sources: [{...}]``."""
        if isinstance(data, dict) and "source" in data:
            if "sources" in data:
                raise ValueError("give 'source' (one provider) or 'sources' (a list), not both")
            data = {**data, "sources": [data["source"]]}
            del data["source"]
        return data

    @field_validator("name")
    @classmethod
    def _sensor_name(cls, v: str) -> str:
        return check_name(v, "sensor name")  # it names store groups and files

    @field_validator("sources")
    @classmethod
    def _providers(cls, v: list[SourceSpec]) -> list[SourceSpec]:
        names = [s.provider for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"providers named twice: {', '.join(dup)} (give each a distinct 'name')")
        return v

    @property
    def source(self) -> SourceSpec:
        """The first provider (the one whose rules apply when an item names none)."""
        return self.sources[0]

    def provider(self, name: str | None) -> SourceSpec:
        """The provider called ``name`` (the first one for None: items found before providers).

        Raises:
            SourceError: no provider of this sensor has that name.
        """
        if name is None:
            return self.sources[0]
        for s in self.sources:
            if s.provider == name:
                return s
        from msc_france.errors import SourceError

        raise SourceError(f"sensor '{self.name}' has no provider '{name}' "
                          f"(it has {', '.join(s.provider for s in self.sources)})")

    @model_validator(mode="after")
    def _check(self) -> SensorSpec:
        names = [b.name for b in self.bands]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate band names in {names}")
        unknown = [b for b in self.rgb if b not in names]
        if unknown:
            raise ValueError(f"rgb names unknown bands {unknown}")
        if self.kind == "labels" and not self.classes:
            raise ValueError("a labels sensor needs 'classes'")
        bad = [c for c in (self.class_colors or {}).values() if not re.fullmatch(r"#[0-9a-fA-F]{6}", c)]
        if bad:
            raise ValueError(f"class_colors must be #rrggbb, got {bad[:3]}")
        lo, hi = self.stored_range
        if not 0 <= lo <= hi <= np.iinfo(self.dtype).max:
            raise ValueError(f"valid_range {[lo, hi]} does not fit {self.dtype}")
        return self

    @property
    def stored_range(self) -> tuple[int, int]:
        """Stored values a data pixel may take (0 is kept for fill when values are scaled)."""
        if self.valid_range is not None:
            return self.valid_range
        top = int(np.iinfo(self.dtype).max)
        return (1, top) if self.scale != 1.0 or self.offset != 0.0 else (0, top)

    @property
    def units(self) -> str:
        """What a stored value means, in words."""
        if self.kind == "labels":
            return "class"
        if self.scale == 1.0 and self.offset == 0.0:
            return "DN"
        return f"physical = stored * {self.scale:g} {self.offset:+g}"

    @property
    def band_names(self) -> list[str]:
        """Our names of the bands, in store order."""
        return [b.name for b in self.bands]


class DemoWorldSpec(StrictModel):
    """Parameters of the synthetic demo world (``_world.yaml`` of a demo catalog)."""

    seed: int = 20240515
    bounds_l93: tuple[float, float, float, float] = Field(
        description="ground-truth extent in Lambert-93 (minx, miny, maxx, maxy), metres"
    )
    dates: list[dt.date] = Field(min_length=1, description="satellite acquisition dates")
    cloud_cover: list[float] = Field(description="target cloud fraction per date (0-1)")
    landsat_dates: list[dt.date] | None = Field(
        None, description="Landsat's own acquisition dates, under their own clouds (default: the Sentinel-2 "
        "dates and clouds)")
    landsat_cloud_cover: list[float] | None = Field(None, description="target cloud fraction per Landsat date")
    aerial_date: dt.date
    aerial_gsd: float = Field(0.5, gt=0)
    aerial_tile_m: float = Field(2000, gt=0)
    worldcover_date: dt.date = dt.date(2021, 1, 1)

    @model_validator(mode="after")
    def _check(self) -> DemoWorldSpec:
        if len(self.cloud_cover) != len(self.dates):
            raise ValueError("cloud_cover needs one value per date")
        if (self.landsat_dates is None) != (self.landsat_cloud_cover is None) or len(self.landsat_dates or []) != len(
                self.landsat_cloud_cover or []):
            raise ValueError("landsat_dates and landsat_cloud_cover go together, one cloud fraction per date")
        minx, miny, maxx, maxy = self.bounds_l93
        if not (minx < maxx and miny < maxy):
            raise ValueError("bounds_l93 must be minx < maxx and miny < maxy")
        return self


class Catalog(StrictModel):
    """A set of sensor sources (one catalog directory) plus, for the demo, its world."""

    name: str
    path: Path
    sensors: dict[str, SensorSpec]
    world: DemoWorldSpec | None = None

    def sensor(self, name: str) -> SensorSpec:
        """Return the sensor spec called ``name`` or raise a one-line error."""
        if name not in self.sensors:
            raise BadInputError(
                f"unknown sensor '{name}' in catalog '{self.name}' (known: {', '.join(sorted(self.sensors))})"
            )
        return self.sensors[name]


def resolve_catalog_dir(name_or_path: str) -> Path:
    """A catalog is a directory name under ``catalogs/`` or a path to a directory of sensor YAMLs."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p.resolve()
    candidate = catalogs_dir() / name_or_path
    if candidate.is_dir():
        return candidate
    known = sorted(d.name for d in catalogs_dir().iterdir() if d.is_dir()) if catalogs_dir().is_dir() else []
    raise BadInputError(f"unknown catalog '{name_or_path}' (known: {', '.join(known)}; or a directory path)")


#: The one setting that points a catalog's services elsewhere (a mirror, a proxy, local test servers).
ENDPOINTS_ENV = "MSC_FRANCE_ENDPOINTS"


def endpoint_map() -> list[tuple[str, str]]:
    """``MSC_FRANCE_ENDPOINTS``: whitespace-separated ``FROM=TO`` URL prefixes, longest first.

    Raises:
        BadInputError: a pair that is not ``FROM=TO`` with two URLs.
    """
    import os

    pairs = []
    for part in os.environ.get(ENDPOINTS_ENV, "").split():
        a, sep, b = part.partition("=")
        if not sep or "://" not in a or "://" not in b:
            raise BadInputError(f"{ENDPOINTS_ENV}: '{part}' is not FROM=TO with two URLs")
        pairs.append((a.rstrip("/"), b.rstrip("/")))
    return sorted(pairs, key=lambda p: -len(p[0]))


def _redirected(spec: SourceSpec, pairs: list[tuple[str, str]]) -> SourceSpec:
    """``spec`` with its service URLs rewritten by ``pairs``. A source moved this way may reach
    loopback and private hosts: the user named them.
    """
    def moved(url: str | None) -> str | None:
        for a, b in pairs:
            if url is not None and (url.rstrip("/") == a or url.startswith(a + "/") or url.startswith(a + "?")):
                return b + url[len(a):] if url.rstrip("/") != a else b
        return url

    changes: dict[str, Any] = {}
    if moved(spec.url) != spec.url:
        changes["url"] = moved(spec.url)
    if spec.wms and spec.wms.dates.features_url and moved(spec.wms.dates.features_url) != spec.wms.dates.features_url:
        dates = spec.wms.dates.model_copy(update={"features_url": moved(spec.wms.dates.features_url)})
        changes["wms"] = spec.wms.model_copy(update={"dates": dates})
    if not changes:
        return spec
    return spec.model_copy(update={**changes, "allow_private_hosts": True})


def load_catalog(name_or_path: str) -> Catalog:
    """Load every ``*.yaml`` sensor spec of a catalog directory (``_world.yaml`` is the demo world),
    with its service URLs moved by ``MSC_FRANCE_ENDPOINTS`` (:func:`endpoint_map`).
    """
    d = resolve_catalog_dir(name_or_path)
    pairs = endpoint_map()
    sensors: dict[str, SensorSpec] = {}
    for f in sorted(d.glob("*.yaml")):
        if f.name.startswith("_"):
            continue
        spec = parse_model(SensorSpec, load_yaml(f), f"sensor {f}")
        if pairs:
            spec = spec.model_copy(update={"sources": [_redirected(s, pairs) for s in spec.sources]})
        if spec.name in sensors:
            raise BadInputError(f"catalog {d}: sensor '{spec.name}' defined twice")
        sensors[spec.name] = spec
    if not sensors:
        raise BadInputError(f"catalog {d} holds no sensor YAML files")
    world = None
    if (d / "_world.yaml").exists():
        world = parse_model(DemoWorldSpec, load_yaml(d / "_world.yaml"), f"demo world {d / '_world.yaml'}")
    return Catalog(name=d.name, path=d, sensors=sensors, world=world)
