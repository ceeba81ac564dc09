"""The frozen values a build task reads, and the interface every product module implements.

STAC items are parsed once, when the plan becomes tasks, into :class:`SourceItem` values: each
asset to read with its band indexes, its declared nodata, and the scale and offset that turn its
values into physical units; each quality mask with the product's name for its decoding. Tasks
never look inside item dictionaries.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from msc_france.errors import BadInputError, SourceError

if TYPE_CHECKING:
    from msc_france.config import SensorSpec, SourceSpec


@dataclass(frozen=True)
class AssetRead:
    """One asset file to warp, and how its values become physical values.

    Attributes:
        key: the STAC asset key.
        href: unsigned href (signed just before the read).
        indexes: 1-based band indexes in the file, in the order of ``targets``.
        targets: 0-based positions of those bands in the store's band order.
        nodata: nodata declared by the item (``raster:bands``) or the sensor config; the file's
            own nodata, when it has one, wins.
        scale: physical = value * scale + offset.
        offset: see ``scale``.
        proj_shape: the item's ``proj:shape`` for this asset, checked against the file.
        proj_transform: the item's ``proj:transform``, checked against the file.
    """

    key: str
    href: str
    indexes: tuple[int, ...]
    targets: tuple[int, ...]
    nodata: float | None
    scale: float = 1.0
    offset: float = 0.0
    proj_shape: tuple[int, int] | None = None
    proj_transform: tuple[float, ...] | None = None


@dataclass(frozen=True)
class MaskRead:
    """One quality-mask asset and the product decoding that applies to it (``type``)."""

    key: str
    href: str
    type: str
    nodata: float | None = None
    proj_shape: tuple[int, int] | None = None
    proj_transform: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SourceItem:
    """One STAC item, parsed for reading: what a build task needs and nothing more."""

    id: str
    product: str
    datetime: int  # seconds since the epoch (UTC)
    assets: tuple[AssetRead, ...]
    masks: tuple[MaskRead, ...]
    harmonization: str
    cloud_cover: float | None = None  # the scene's ``eo:cloud_cover`` (percent), when the item states it
    provider: str | None = None  # the provider that served it (``SourceSpec.provider``; None: the first)
    date_rule: str | None = None  # how its date was known, when a source had to decide (WMS imagery)
    #: The same scene from the next providers, read in order when this one's files cannot be.
    alternates: tuple[SourceItem, ...] = ()


def _proj(asset: dict[str, Any]) -> tuple[tuple[int, int] | None, tuple[float, ...] | None]:
    shape = asset.get("proj:shape")
    tr = asset.get("proj:transform")
    return (tuple(int(v) for v in shape) if shape else None,  # type: ignore[return-value]
            tuple(float(v) for v in tr[:6]) if tr else None)


def band_info(asset: dict[str, Any], index: int) -> dict[str, Any]:
    """The ``raster:bands`` entry of a 1-based band of an asset ({} when absent)."""
    rb = asset.get("raster:bands") or []
    if len(rb) >= index:
        return dict(rb[index - 1])
    return dict(rb[0]) if len(rb) == 1 else {}


#: Item properties the planner and the sources write (see :mod:`msc_france.sources.base`).
PROVIDER = "msc_france:provider"
DATE_RULE = "msc_france:date_rule"
ALTERNATES = "msc_france:alternates"


def _href(src: SourceSpec, asset: dict[str, Any]) -> str:
    """The asset's href after its provider's href policy (see :mod:`msc_france.urls`)."""
    from msc_france.urls import check_href

    href = asset.get("href")
    if not isinstance(href, str) or not href:
        raise SourceError("an asset has no href")
    if src.type == "wms":  # a GetMap request without its bbox: a remote service, never a local path
        return check_href(href, local_ok=False, allowed_hosts=src.allowed_hosts, private_ok=src.allow_private_hosts)
    # Local paths only from catalogs on this machine: a static catalog served over http or from a
    # bucket must not make us read local files.
    path = str(src.path or "")
    local_ok = src.type == "demo" or (src.type == "static" and ("://" not in path or path.startswith("file://")))
    return check_href(href, local_ok=local_ok, allowed_hosts=src.allowed_hosts,
                      private_ok=src.allow_private_hosts)


def band_index(asset: dict[str, Any], band: Any, item_id: str) -> int:
    """1-based index of ``band`` in a multi-band asset, found by name in its ``eo:bands``.

    Single-band assets need no lookup. Band order is never assumed: a multi-band asset that
    does not name the band is refused.
    """
    eo = asset.get("eo:bands") or asset.get("bands") or []
    if len(eo) <= 1:
        return 1
    names = [band.common_name or band.name, band.name]
    for i, b in enumerate(eo, start=1):
        if b.get("common_name") in names or b.get("name") in names:
            return i
    raise SourceError(f"item {item_id}: no band named {names[0]!r} in the eo:bands of its '{band.asset}' asset")


def item_datetime(item: dict[str, Any]) -> dt.datetime | None:
    """The item's ``datetime`` (or ``start_datetime``) as an aware datetime."""
    props = item.get("properties", {})
    when = props.get("datetime") or props.get("start_datetime")
    if not when:
        return None
    d = dt.datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


class ProductRules(ABC):
    """How one product family's items are read. Subclasses override what differs."""

    #: The ``product`` name sensor YAMLs use.
    name: ClassVar[str]
    #: Mask types this product decodes (the ``type`` of a sensor's ``masks`` entries).
    mask_types: ClassVar[tuple[str, ...]] = ()

    def check(self, spec: SensorSpec) -> None:
        """Refuse a sensor spec this product cannot read (mask types it does not decode).

        Raises:
            BadInputError: naming the sensor and what is wrong.
        """
        bad = [m.type for m in spec.masks if m.type not in self.mask_types]
        if bad:
            raise BadInputError(f"sensor '{spec.name}': product '{self.name}' has no mask type {bad} "
                                f"(it has {list(self.mask_types)})")

    def radiometry(self, spec: SensorSpec, item: dict[str, Any], key: str,
                   asset: dict[str, Any], index: int) -> tuple[float, float, str]:
        """(scale, offset, description) turning one band's values into physical values."""
        info = band_info(asset, index)
        if "scale" in info or "offset" in info:
            scale, offset = float(info.get("scale", 1.0)), float(info.get("offset", 0.0))
            return scale, offset, f"DN * {scale:g} {offset:+g}"
        v = spec.values
        if v.scale == 1.0 and v.offset == 0.0:
            return 1.0, 0.0, "none"
        return v.scale, v.offset, f"DN * {v.scale:g} {v.offset:+g} (sensor config)"

    def parse(self, spec: SensorSpec, item: dict[str, Any]) -> SourceItem:
        """Turn a STAC item (as a dict) into the frozen value a build task reads.

        Raises:
            SourceError: an asset the sensor needs is missing, or its radiometry is undeclared.
        """
        iid = str(item.get("id", "?"))
        assets = item.get("assets", {})
        props = item.get("properties", {})
        provider = props.get(PROVIDER)
        src = spec.provider(None if provider is None else str(provider))
        by_asset: dict[str, list[tuple[int, int]]] = {}
        for pos, band in enumerate(spec.bands):
            asset = assets.get(band.asset)
            if asset is None:
                raise SourceError(f"item {iid} has no '{band.asset}' asset")
            by_asset.setdefault(band.asset, []).append((pos, band.index or band_index(asset, band, iid)))
        reads, harms = [], []
        for key, members in by_asset.items():
            asset = assets[key]
            radiom = {self.radiometry(spec, item, key, asset, idx) for _, idx in members}
            if len(radiom) > 1:  # one warp per asset: its bands must share scale and offset
                raise SourceError(f"item {iid} asset '{key}': bands declare different scale/offset")
            scale, offset, harm = radiom.pop()
            nd = band_info(asset, members[0][1]).get("nodata", spec.nodata)
            shape, tr = _proj(asset)
            reads.append(AssetRead(key, _href(src, asset), tuple(i for _, i in members),
                                   tuple(p for p, _ in members), None if nd is None else float(nd),
                                   scale, offset, shape, tr))
            if harm not in harms:
                harms.append(harm)
        masks = []
        for m in spec.masks:
            asset = assets.get(m.asset)
            if asset is None:
                raise SourceError(f"item {iid} has no '{m.asset}' mask asset ({m.type})")
            nd = band_info(asset, 1).get("nodata")
            shape, tr = _proj(asset)
            masks.append(MaskRead(m.asset, _href(src, asset), m.type, None if nd is None else float(nd), shape, tr))
        when = item_datetime(item)
        cc = props.get("eo:cloud_cover")
        try:
            cloud_cover = None if cc is None or not 0 <= float(cc) <= 100 else float(cc)
        except (TypeError, ValueError):
            cloud_cover = None  # a scene value is informative only: an odd one is left out
        alternates = []
        for alt in props.get(ALTERNATES) or ():
            try:
                alternates.append(self.parse(spec, alt))
            except (SourceError, BadInputError, KeyError, TypeError, ValueError, AttributeError):
                continue  # a copy that cannot be read is no fallback; the primary still is
        rule = props.get(DATE_RULE)
        return SourceItem(iid, self.name, int(when.timestamp()) if when else 0, tuple(reads), tuple(masks),
                          "; ".join(harms), cloud_cover, src.provider if provider is not None else None,
                          None if rule is None else str(rule), tuple(alternates))

    def scene_key(self, item: dict[str, Any]) -> str:
        """What names one acquisition whoever serves it: two providers' items with the same key are
        the same scene, and the planner keeps one (the first provider's). Plain rasters: the item id.
        """
        return str(item.get("id", ""))

    def decode_mask(self, type: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nodata, not-clear) boolean masks from a warped quality raster of this product."""
        raise SourceError(f"product {self.name} has no mask type '{type}'")
