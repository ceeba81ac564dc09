"""The store's records as values: a chip's status, what one sensor's build of a chip produced, and
the done mark of a shard. They are the only way in and out of the done marks' JSON
(``_commits/shard-NNNNNN.json``): written by the builder, read by consolidation, validation and the
next build.

The JSON keeps the layout stores have always had (``{"shard", "chips": {id: {"index", "worker",
"sensors": {group: {...}}}}}``), so existing stores read unchanged; ``version`` is added.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

#: Version of the done-mark records (absent in stores written before records had one: 1).
RECORD_VERSION = 1


class Status(StrEnum):
    """What a chip of one sensor is, with the code stored in ``<group>/status``."""

    PENDING = "pending"
    OK = "ok"
    FLAGGED = "flagged"
    DROPPED = "dropped"
    FAILED = "failed"
    NODATA = "nodata"

    @property
    def code(self) -> int:
        """The uint8 code in the ``status`` array (and its ``flag_values``)."""
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Status:
        """The status of a stored code."""
        return _BY_CODE[int(code)]

    @property
    def done(self) -> bool:
        """A rerun does not rebuild it (failed chips only with ``--retry-failed``)."""
        return self in (Status.OK, Status.FLAGGED, Status.DROPPED, Status.NODATA)

    @property
    def written(self) -> bool:
        """Its pixels are in the store (ok, or flagged below ``min_valid_fraction`` but kept)."""
        return self in (Status.OK, Status.FLAGGED)

    @property
    def reported(self) -> bool:
        """Listed in ``failures.json``: anything but ok and pending."""
        return self not in (Status.OK, Status.PENDING)


_CODES = {Status.PENDING: 0, Status.OK: 1, Status.FLAGGED: 2, Status.DROPPED: 3, Status.FAILED: 4, Status.NODATA: 5}
_BY_CODE = {v: k for k, v in _CODES.items()}


@dataclass(frozen=True)
class LayerRecord:
    """What building one chip of one sensor produced."""

    status: Status
    reason: str | None = None
    item_ids: tuple[str, ...] = ()
    datetime: int | None = None  # acquisition, seconds since the epoch (UTC)
    harmonization: str = ""
    cloud_fraction: float | None = None  # cloud and shadow share of the chip's covered pixels (its masks)
    scene_cloud_cover: float | None = None  # what the scenes' metadata state (eo:cloud_cover, percent)
    valid_fraction: float | None = None
    covered_fraction: float | None = None
    clipped: int | None = None
    skipped_candidates: tuple[str, ...] = ()
    checksum: str | None = None
    overview_checksums: Mapping[str, str] = field(default_factory=dict)
    stats: Mapping[str, Any] | None = None  # per-band sum, sumsq and count of valid pixels
    class_counts: Mapping[str, int] | None = None  # labels: valid pixels per class code
    traceback: str | None = None
    # Co-registration against the chip's reference sensor (msc_france.builder.coreg).
    shift_x_m: float | None = None
    shift_y_m: float | None = None
    coreg_quality: float | None = None
    coreg_overlap: float | None = None
    applied_shift_x_m: float | None = None  # co-registration correction applied (coregistration.correct)
    applied_shift_y_m: float | None = None
    # Where the pixels came from when a sensor has several providers or a source dated them.
    provider: str | None = None  # the provider(s) that served the items used, comma-separated
    date_rule: str | None = None  # how the acquisition's date was known (WMS imagery: sources/wms.py)

    @classmethod
    def failed(cls, reason: str, traceback: str | None = None) -> LayerRecord:
        """A chip that could not be built, with why."""
        return cls(Status.FAILED, reason=reason, traceback=traceback)

    def with_overview(self, factor: int, checksum: str) -> LayerRecord:
        """This record with the checksum of its overview level ``factor`` added."""
        return replace(self, overview_checksums={**self.overview_checksums, str(factor): checksum})

    def to_json(self) -> dict[str, Any]:
        """The JSON object of a done mark (empty and unset fields left out)."""
        d: dict[str, Any] = {"status": self.status.value}
        for k in ("reason", "datetime", "cloud_fraction", "scene_cloud_cover", "valid_fraction", "covered_fraction", "clipped",
                  "checksum", "traceback", "shift_x_m", "shift_y_m", "coreg_quality", "coreg_overlap",
                  "applied_shift_x_m", "applied_shift_y_m", "provider", "date_rule"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.item_ids or self.status.written:
            d["item_ids"] = list(self.item_ids)
        if self.harmonization:
            d["harmonization"] = self.harmonization
        if self.skipped_candidates:
            d["skipped_candidates"] = list(self.skipped_candidates)
        if self.overview_checksums:
            d["overview_checksums"] = dict(self.overview_checksums)
        if self.stats is not None:
            d["stats"] = dict(self.stats)
        if self.class_counts is not None:
            d["class_counts"] = dict(self.class_counts)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LayerRecord:
        """A record read back (KeyError, ValueError or TypeError when it is not one)."""
        return cls(
            status=Status(d["status"]), reason=d.get("reason"), item_ids=tuple(str(i) for i in d.get("item_ids", ())),
            datetime=None if d.get("datetime") is None else int(d["datetime"]),
            harmonization=str(d.get("harmonization") or ""),
            cloud_fraction=_float(d.get("cloud_fraction")), scene_cloud_cover=_float(d.get("scene_cloud_cover")),
            valid_fraction=_float(d.get("valid_fraction")),
            covered_fraction=_float(d.get("covered_fraction")),
            clipped=None if d.get("clipped") is None else int(d["clipped"]),
            skipped_candidates=tuple(str(s) for s in d.get("skipped_candidates", ())),
            checksum=d.get("checksum"), overview_checksums=dict(d.get("overview_checksums") or {}),
            stats=d.get("stats"), traceback=d.get("traceback"),
            class_counts={str(k): int(v) for k, v in d["class_counts"].items()} if d.get("class_counts") else None,
            shift_x_m=_float(d.get("shift_x_m")), shift_y_m=_float(d.get("shift_y_m")),
            coreg_quality=_float(d.get("coreg_quality")),
            coreg_overlap=_float(d.get("coreg_overlap")), applied_shift_x_m=_float(d.get("applied_shift_x_m")),
            applied_shift_y_m=_float(d.get("applied_shift_y_m")),
            provider=None if d.get("provider") is None else str(d["provider"]),
            date_rule=None if d.get("date_rule") is None else str(d["date_rule"]))


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True)
class ChipRecord:
    """Every sensor's record of one chip, and where it was built."""

    index: int | None = None
    worker: str | None = None
    layers: Mapping[str, LayerRecord] = field(default_factory=dict)

    def status(self, group: str) -> Status:
        """The status of ``group`` (pending when it has no record)."""
        rec = self.layers.get(group)
        return Status.PENDING if rec is None else rec.status

    def to_json(self) -> dict[str, Any]:
        """The chip's JSON object in a done mark."""
        d: dict[str, Any] = {}
        if self.index is not None:
            d["index"] = self.index
        if self.worker is not None:
            d["worker"] = self.worker
        d["sensors"] = {g: r.to_json() for g, r in self.layers.items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ChipRecord:
        """A chip record read back."""
        return cls(index=None if d.get("index") is None else int(d["index"]), worker=d.get("worker"),
                   layers={str(g): LayerRecord.from_json(r) for g, r in dict(d["sensors"]).items()})


@dataclass(frozen=True)
class ShardCommit:
    """The done mark of one shard: the chips it holds as built, written after their data."""

    shard: int
    chips: Mapping[str, ChipRecord]
    version: int = RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        """The done mark's JSON document."""
        return {"version": self.version, "shard": self.shard,
                "chips": {cid: c.to_json() for cid, c in self.chips.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ShardCommit:
        """A done mark read back (KeyError, ValueError or TypeError when it is not one)."""
        version = int(d.get("version", 1))
        if version > RECORD_VERSION:
            raise ValueError(f"done-mark version {version} is newer than this msc-france reads ({RECORD_VERSION})")
        return cls(shard=int(d["shard"]), chips={str(c): ChipRecord.from_json(r) for c, r in dict(d["chips"]).items()},
                   version=version)


#: Chip records keyed by chip id, as :meth:`Store.read_commits` returns them.
Commits = Mapping[str, ChipRecord]

__all__ = ["RECORD_VERSION", "ChipRecord", "Commits", "LayerRecord", "ShardCommit", "Status"]
