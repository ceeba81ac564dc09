"""The store's root attributes and its summaries as values: :class:`StoreMeta` (the ``msc_france``
attributes of the root group, the only way they are read or written), :class:`StoreInfo` (what
``msc-france info`` shows) and :class:`ConsolidateSummary` (what consolidation counted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from msc_france.store.schema import ROOT_KEYS, Layer


def layer_from_record(d: Mapping[str, Any]) -> Layer:
    """A layer as stored in the root attributes (:meth:`Layer.record`)."""
    # Stores written before the encoding was declared: uint16 reflectance x 10000, else DN.
    scaled = d["dtype"] == "uint16" and not d["is_label"]
    return Layer(str(d["group"]), str(d["sensor"]), float(d["gsd"]), tuple(str(b) for b in d["bands"]), str(d["dtype"]),
                 bool(d["is_label"]), float(d.get("scale", 1e-4 if scaled else 1.0)), float(d.get("offset", 0.0)),
                 str(d.get("units", "physical = stored * 0.0001 +0" if scaled else "DN")),
                 tuple(int(f) for f in d.get("overviews", ())))


@dataclass(frozen=True)
class StoreMeta:
    """The root group's ``msc_france`` attributes.

    Attributes:
        format_version: the store layout's version.
        recipe: the rules the store was built with (an opaque value compared by the builder).
        chip_size_m, chips_per_shard: the chip grid and its sharding.
        layers: the groups, in store order.
        regions: names of the regions built into the store.
        n_chips: chips registered; ``n_chips_pending`` the count a registration is growing to.
        complete: every chip of every group done, none failed (set by consolidation).
        created, consolidated: ISO timestamps (UTC).
        crs: the chip grid's CRS.
        extra: keys this version does not know, kept as they are.
    """

    format_version: int
    recipe: Mapping[str, Any]
    chip_size_m: int
    chips_per_shard: int
    layers: tuple[Layer, ...]
    regions: tuple[str, ...] = ()
    n_chips: int = 0
    complete: bool = False
    created: str | None = None
    consolidated: str | None = None
    crs: str = "EPSG:2154"
    n_chips_pending: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def recipe_name(self) -> str:
        """The recipe's name."""
        return str(self.recipe.get("name", "msc-france"))

    @property
    def chip_bound(self) -> int:
        """The most chips the arrays may hold: registered, or being registered."""
        return max(self.n_chips, self.n_chips_pending or 0)

    def but(self, **changes: Any) -> StoreMeta:
        """A copy with ``changes``."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The attributes as stored (unset optional keys left out)."""
        d: dict[str, Any] = {**self.extra, "format_version": self.format_version, "recipe": dict(self.recipe),
                             "chip_size_m": self.chip_size_m, "chips_per_shard": self.chips_per_shard,
                             "crs": self.crs, "layers": [L.record() for L in self.layers],
                             "regions": list(self.regions), "n_chips": self.n_chips, "complete": self.complete}
        for k in ("created", "consolidated", "n_chips_pending"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StoreMeta:
        """Parse the attributes once (KeyError, ValueError or TypeError when they are not a store's).

        Raises:
            KeyError: naming the first root key that is missing.
        """
        missing = [k for k in ROOT_KEYS if k not in d]
        if missing:
            raise KeyError(", ".join(missing))
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            format_version=int(d["format_version"]), recipe=dict(d["recipe"]), chip_size_m=int(d["chip_size_m"]),
            chips_per_shard=int(d["chips_per_shard"]), layers=tuple(layer_from_record(x) for x in d["layers"]),
            regions=tuple(str(r) for r in d["regions"]), n_chips=int(d.get("n_chips", 0)),
            complete=bool(d.get("complete", False)), created=d.get("created"), consolidated=d.get("consolidated"),
            crs=str(d.get("crs", "EPSG:2154")),
            n_chips_pending=None if d.get("n_chips_pending") is None else int(d["n_chips_pending"]),
            extra={k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class BandStats:
    """A group's per-band normalisation statistics (stored units), as consolidation computes them."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int
    units: str = ""
    over: str = ""

    def to_json(self) -> dict[str, Any]:
        """The ``stats`` attribute of the group."""
        return {"mean": list(self.mean), "std": list(self.std), "count": self.count, "units": self.units,
                "over": self.over}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> BandStats | None:
        """The statistics of a ``stats`` attribute (None when absent)."""
        if not d:
            return None
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]), int(d["count"]),
                   str(d.get("units", "")), str(d.get("over", "")))


@dataclass(frozen=True)
class LabelClasses:
    """A store's label classes: code -> contiguous index (what models predict) and code -> name."""

    index: Mapping[int, int] = field(default_factory=dict)
    names: Mapping[int, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.index)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> LabelClasses:
        """The classes of a labels group's ``class_index`` and ``classes`` attributes."""
        index = {int(k): int(v) for k, v in attrs["class_index"].items()}
        names = attrs.get("classes", {})
        return cls(index, {c: str(names.get(str(c), c)) for c in index})


@dataclass(frozen=True)
class LayerSummary:
    """One group's counts by status and its per-band statistics, as consolidation folded them."""

    counts: Mapping[str, int]
    stats: BandStats | None = None

    def count(self, status: str) -> int:
        """Chips with ``status`` (0 when none)."""
        return int(self.counts.get(status, 0))


@dataclass(frozen=True)
class ConsolidateSummary:
    """What :func:`~msc_france.store.consolidate.consolidate` counted."""

    n_chips: int
    layers: Mapping[str, LayerSummary]
    complete: bool


@dataclass(frozen=True)
class LayerInfo:
    """One group, as ``msc-france info`` shows it."""

    sensor: str
    gsd: float
    bands: tuple[str, ...]
    dtype: str
    chip_pixels: int
    status: Mapping[str, int]
    mean_valid_fraction: float | None
    stats: BandStats | None


@dataclass(frozen=True)
class StoreInfo:
    """A store's summary (``msc-france info``; ``--json`` prints :meth:`to_json`)."""

    path: str
    format_version: int
    recipe: str
    chip_size_m: int
    chips_per_shard: int
    n_chips: int
    regions: tuple[str, ...]
    complete: bool
    layers: Mapping[str, LayerInfo]
    splits: Mapping[str, int]
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain values (lists for tuples)."""
        d = asdict(self)
        d["regions"], d["problems"] = list(self.regions), list(self.problems)
        for g, v in d["layers"].items():
            v["bands"] = list(v["bands"])
            stats = self.layers[g].stats
            v["stats"] = stats.to_json() if stats is not None else None
        return d

    def line(self) -> str:
        """The first line of ``msc-france info``."""
        return (f"{self.path}: format v{self.format_version}, recipe {self.recipe}, {self.n_chips} chips of "
                f"{self.chip_size_m} m ({self.chips_per_shard} per shard), regions {', '.join(self.regions)}, "
                f"{'complete' if self.complete else 'INCOMPLETE'}")
