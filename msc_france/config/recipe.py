"""Build recipes: which sensors at which GSD, the time window, label source, chip size and split."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from msc_france.config.base import StrictModel, load_yaml, parse_model
from msc_france.config.sensors import Catalog
from msc_france.errors import BadInputError
from msc_france.paths import pipelines_dir
from msc_france.splits import SplitRule


class TimeWindow(StrictModel):
    """Acquisition time window; ``target`` (default: the middle) ranks acquisitions by distance."""

    start: dt.date
    end: dt.date
    target: dt.date | None = None

    @model_validator(mode="after")
    def _check(self) -> TimeWindow:
        if self.end < self.start:
            raise ValueError(f"time window ends ({self.end}) before it starts ({self.start})")
        if self.target is not None and not self.start <= self.target <= self.end:
            raise ValueError("time.target must lie inside the window")
        return self

    @property
    def target_date(self) -> dt.date:
        """The date acquisitions are ranked against."""
        return self.target or self.start + (self.end - self.start) / 2


class SensorRecipe(StrictModel):
    """How one sensor is built into the store."""

    gsd: float | None = Field(None, gt=0, description="store GSD in metres; default: the sensor's default_gsd")
    max_cloud_cover: float = Field(60.0, ge=0, le=100, description="item-level cloud cover filter, percent")
    min_valid_fraction: float = Field(0.7, ge=0, le=1)
    max_candidates: int = Field(3, ge=1, description="acquisitions tried per chip, best first")
    selection: Literal["first-valid", "clearest"] = Field(
        "first-valid", description="first-valid: the first candidate (in plan rank) valid enough; clearest: read "
        "every candidate and keep the one with the most valid (clear, covered) pixels inside the chip")
    time: TimeWindow | None = Field(None, description="this sensor's own acquisition window (default: the "
                                    "recipe's): aerial surveys revisit a département every 3 years")
    overviews: list[int] = Field(default_factory=list, description="overview factors stored next to full "
                                 "resolution (each must divide the chip's pixel side), e.g. [5] for training "
                                 "at 128 px from 640 px aerial chips")

    @field_validator("overviews")
    @classmethod
    def _factors(cls, v: list[int]) -> list[int]:
        if any(f < 2 for f in v):
            raise ValueError("overview factors must be >= 2")
        if len(set(v)) != len(v):
            raise ValueError("overview factors must be distinct")
        return sorted(v)


class LabelRecipe(StrictModel):
    """The label source rasterised onto each chip (nearest resampling)."""

    sensor: str
    gsd: float | None = Field(None, gt=0)
    time: TimeWindow | None = None


class SplitSpec(StrictModel):
    """Deterministic train/val/test split: per chip, or in spatial blocks with a buffer
    (:mod:`msc_france.splits`).
    """

    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    salt: str = "msc-france"
    block_chips: int = Field(1, ge=1, le=1000, description="block side in chips; 1 splits chip by chip")
    buffer_chips: int = Field(0, ge=0, le=100, description="chips between splits that belong to none")

    def rule(self) -> SplitRule:
        """The split rule this spec describes."""
        return SplitRule((self.train, self.val, self.test), self.salt, self.block_chips, self.buffer_chips)

    @model_validator(mode="after")
    def _check(self) -> SplitSpec:
        if not math.isclose(self.train + self.val + self.test, 1.0, abs_tol=1e-9):
            raise ValueError("split fractions must sum to 1")
        return self


class Coregistration(StrictModel):
    """Per-chip co-registration between sensors (msc_france.builder.coreg)."""

    measure: bool = Field(True, description="measure every sensor's shift against the reference, per chip")
    reference: str | None = Field(None, description="reference sensor (default: the finest sensor of the recipe)")
    max_misregistration_m: float | None = Field(
        None, gt=0, description="flag a sensor of a chip whose measured shift exceeds this (status flagged, reason "
        "recorded); None: measure only")
    min_quality: float = Field(0.3, ge=0, le=1, description="shifts measured with a lower quality never flag nor "
                               "correct a chip")
    correct: bool = Field(False, description="re-read a sensor from a grid displaced by its measured shift (same "
                          "resampling, sub-pixel), record the shift applied, then measure the residual")


class Limits(StrictModel):
    """Resource bounds of a build, checked before anything is read (they change no content)."""

    max_chip_pixels: int = Field(2**27, ge=1, description="pixels of one chip of one sensor "
                                 "(chip_size_m / gsd squared; 2^27 is 11,585 x 11,585)")


class Recipe(StrictModel):
    """A build recipe (``pipelines/*.yaml``)."""

    name: str
    catalog: str = "default"
    sensors: dict[str, SensorRecipe] = Field(min_length=1)
    labels: LabelRecipe | None = None
    time: TimeWindow
    chip_size_m: int = Field(1920, gt=0)
    invalid_policy: Literal["flag", "drop"] = "flag"
    chips_per_shard: int = Field(16, ge=1, le=4096)
    split: SplitSpec = SplitSpec()
    limits: Limits = Limits()
    coregistration: Coregistration = Coregistration()

    @field_validator("chip_size_m", mode="before")
    @classmethod
    def _integral_size(cls, v: Any) -> Any:
        if isinstance(v, float) and not v.is_integer():
            raise ValueError("chip_size_m must be a whole number of metres")
        return v

    def rules(self) -> RecipeRules:
        """The recipe as a store records it, and how a later build is compared with it."""
        rules = self.model_dump(mode="json")
        for sensor_rules in rules["sensors"].values():
            if sensor_rules.get("selection") == "first-valid":  # the rule stores had before it was a choice
                sensor_rules.pop("selection")
        if self.coregistration.max_misregistration_m is None and not self.coregistration.correct:
            # Measuring changes no pixel and no status: recorded only when it can flag or correct
            # chips, so that stores built before co-registration existed still append.
            rules.pop("coregistration")
        if self.split.block_chips == 1 and self.split.buffer_chips == 0:
            # The per-chip rule is stored as it was before blocks existed, so older stores still append.
            for key in ("block_chips", "buffer_chips"):
                rules["split"].pop(key)
        return RecipeRules(rules)


#: Recipe keys that do not change what a chip holds or which split it is in.
RECIPE_NEUTRAL = frozenset({"name", "catalog", "limits"})


@dataclass(frozen=True)
class RecipeRules:
    """A recipe's rules as a store records them (:meth:`Recipe.rules`). The store treats them as an
    opaque value: it stores :meth:`to_json` and asks :meth:`differences` of a store's recorded rules.
    """

    data: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The rules as stored."""
        return dict(self.data)

    def differences(self, stored: Mapping[str, Any]) -> list[str]:
        """``key: stored -> new`` for every rule that differs from ``stored`` (the rules that change
        a chip's content or split; a recipe's name, catalog and limits do not).
        """
        return _differences(stored, self.data, "")


def _differences(stored: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> list[str]:
    out = []
    for k in sorted(set(stored) | set(new)):
        if not prefix and k in RECIPE_NEUTRAL:
            continue
        a, b = stored.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_chip_size(chip_size_m: int, gsds: dict[str, float], limits: Limits | None = None) -> None:
    """Refuse a chip size that is not an integer multiple of every GSD, or that makes a chip larger
    than ``limits.max_chip_pixels``.

    Raises:
        BadInputError: naming the first offending sensor.
    """
    from msc_france.grid import pixels_per_chip  # the one home of the rule

    limits = limits or Limits()
    for name, gsd in gsds.items():
        side = chip_size_m / gsd
        if side * side > limits.max_chip_pixels:
            raise BadInputError(f"{name}: a {chip_size_m} m chip at {gsd:g} m is {side:.0f} x {side:.0f} pixels, more "
                                f"than limits.max_chip_pixels ({limits.max_chip_pixels})")
        try:
            pixels_per_chip(chip_size_m, gsd)
        except BadInputError:
            raise BadInputError(f"chip size {chip_size_m} m is not an integer multiple of {name}'s GSD {gsd:g} m "
                                f"({chip_size_m / gsd:.4g} pixels)") from None


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe is a YAML path or a name under ``pipelines/`` (``demo`` -> pipelines/demo.yaml)."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return pipelines_dir() / f"{name_or_path}.yaml"


def load_recipe(name_or_path: str) -> Recipe:
    """Load and strictly validate a build recipe."""
    path = resolve_recipe_path(name_or_path)
    return parse_model(Recipe, load_yaml(path), f"recipe {path}")


def sensor_gsds(recipe: Recipe, catalog: Catalog) -> dict[str, float]:
    """Store GSD of every sensor of the recipe (and of its labels), checked against the chip size."""
    gsds = {name: (sr.gsd or catalog.sensor(name).default_gsd) for name, sr in recipe.sensors.items()}
    if recipe.labels is not None:
        lab = catalog.sensor(recipe.labels.sensor)
        if lab.kind != "labels":
            raise BadInputError(f"label source '{lab.name}' is not a labels sensor")
        gsds[recipe.labels.sensor] = recipe.labels.gsd or lab.default_gsd
    for name in recipe.sensors:
        if catalog.sensor(name).kind != "reflectance":
            raise BadInputError(f"sensor '{name}' is a labels source; put it under 'labels:'")
    check_chip_size(recipe.chip_size_m, gsds, recipe.limits)
    return gsds
