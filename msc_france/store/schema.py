"""What a store holds: its layers, the arrays of each group and their attributes (format version 2).

The arrays follow CF and the GeoZarr conventions where they apply, so that xarray, rioxarray and
odc-geo read them with no extra arguments: per-chip pixel-centre coordinates ``x (chip, x)`` and
``y (chip, y)`` in Lambert-93 metres, a ``spatial_ref`` grid-mapping coordinate, ``nodata`` instead of
``_FillValue`` (xarray keeps integer images integer), ``proj:code``, ``spatial:dimensions`` and a
machine-readable per-chip affine transform ``spatial_transform (chip, 6)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from msc_france.crs import L93
from msc_france.grid import pixels_per_chip
from msc_france.store.chip_index import column  # noqa: F401 (the index's naming, re-exported)
from msc_france.store.overviews import OVERVIEWS, overview_path
from msc_france.store.records import Status

#: Version 2 added per-chip x/y coordinates and transforms, and dropped ``_FillValue``.
FORMAT_VERSION = 2
LABELS_GROUP = "labels"
META_ARRAYS = ("status", "datetime", "item_ids", "cloud_fraction", "valid_fraction", "harmonization")
#: zstd with frame checksums: every reader (zarr and store.shards) verifies each chunk it decodes, so
#: flipped bytes are an error, never pixels.
COMPRESSOR = ZstdCodec(level=3, checksum=True)
#: Root attributes every reader relies on.
ROOT_KEYS = ("format_version", "recipe", "chip_size_m", "chips_per_shard", "layers", "regions")
#: Per-chip coordinates every pixel array of a group carries (CF ``coordinates``).
PIXEL_COORDS = "chip_id datetime y x spatial_ref"


@dataclass(frozen=True)
class SensorFacts:
    """What a sensor is, as its catalog YAML states it and its group's ``msc_france:sensor``
    attribute keeps it: read by the dataset card, previews, exports and model cards.

    Attributes:
        title: the sensor's name for people.
        provenance: where its pixels come from (producer, distributor).
        licence: the data licence.
        display_name: a short name (folder names of the X-STARS PNG export).
        class_colors: label class code -> colour (``#rrggbb``), for label sensors.
    """

    title: str
    provenance: str = "not stated"
    licence: str = "not stated"
    display_name: str = ""
    class_colors: Mapping[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The group attribute's value."""
        return {"title": self.title, "provenance": self.provenance, "licence": self.licence,
                "display_name": self.display_name, "class_colors": {str(k): v for k, v in self.class_colors.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None, group: str) -> SensorFacts:
        """The facts of a group's attribute; a store built before they were recorded says so."""
        if not d:
            return cls(group, "not recorded (store built before msc-france recorded sources)",
                       "not recorded (see the source)", group)
        return cls(str(d.get("title", group)), str(d.get("provenance", "not stated")),
                   str(d.get("licence", "not stated")), str(d.get("display_name") or group),
                   {int(k): str(v) for k, v in dict(d.get("class_colors") or {}).items()})


#: The group attribute that holds a sensor's :class:`SensorFacts`.
FACTS_ATTR = "msc_france:sensor"


@dataclass(frozen=True)
class Layer:
    """One group of the store: a reflectance sensor or the labels."""

    group: str
    sensor: str
    gsd: float
    bands: tuple[str, ...]
    dtype: str
    is_label: bool
    scale: float = 1.0  # physical = stored * scale + offset
    offset: float = 0.0
    units: str = "DN"
    #: Overview factors stored next to full resolution (:mod:`msc_france.store.overviews`).
    overviews: tuple[int, ...] = ()
    #: What the sensor is (written into the group's attributes when the store is created; not
    #: part of the root record, so stores compare equal whatever their catalogs say of a sensor).
    facts: SensorFacts | None = field(default=None, compare=False)

    @property
    def data_name(self) -> str:
        """Name of the pixel array inside the group."""
        return "class" if self.is_label else "image"

    def pixels(self, chip_size_m: int) -> int:
        """Pixels along a chip side."""
        return pixels_per_chip(chip_size_m, self.gsd)

    def record(self) -> dict[str, Any]:
        """The layer as stored in the root attributes."""
        return {"group": self.group, "sensor": self.sensor, "gsd": self.gsd, "bands": list(self.bands),
                "dtype": self.dtype, "is_label": self.is_label, "scale": self.scale, "offset": self.offset,
                "units": self.units, "overviews": list(self.overviews)}

    def overview_pixels(self, chip_size_m: int, factor: int) -> int:
        """Pixels along a chip side at overview ``factor``."""
        return self.pixels(chip_size_m) // factor


class Rules(Protocol):
    """What the store needs of a build's rules: their stored form, and how stored ones differ."""

    def to_json(self) -> dict[str, Any]:
        """The rules as recorded in the root attributes."""
        ...

    def differences(self, stored: Mapping[str, Any]) -> list[str]:
        """One line per rule that differs from the recorded ``stored`` (empty: the same)."""
        ...


@dataclass(frozen=True)
class StoreSchema:
    """Everything needed to create a store, independent of how it is built.

    Attributes:
        chip_size_m: chip side in metres (a whole multiple of every layer's GSD).
        chips_per_shard: chips per shard file.
        layers: the groups, reflectance sensors first, labels last.
        rules: the build rules recorded in the store, an opaque value (the recipe's
            :class:`~msc_france.config.recipe.RecipeRules`); a later build must match them.
        classes: label class code -> name, when the store has labels.
    """

    chip_size_m: int
    chips_per_shard: int
    layers: tuple[Layer, ...]
    rules: Rules
    classes: dict[int, str] | None = None


def reference_layer(layers: Sequence[Layer], chosen: str | None = None) -> Layer | None:
    """The co-registration reference among ``layers``: ``chosen`` when it names a sensor layer,
    else the finest sensor; None without two sensor layers.
    """
    sensors = [L for L in layers if not L.is_label]
    if len(sensors) < 2:
        return None
    return next((L for L in sensors if L.group == chosen), None) or min(sensors, key=lambda L: L.gsd)


def chip_checksum(data: np.ndarray, valid: np.ndarray) -> str:
    """sha256 of a chip's stored bytes, image (bands, y, x) then valid mask: recorded in its done mark
    by the build and checked by ``validate``.
    """
    h = hashlib.sha256(np.ascontiguousarray(data).tobytes())
    h.update(np.ascontiguousarray(valid).tobytes())
    return h.hexdigest()


def grid_mapping_attrs() -> dict[str, Any]:
    """CF grid mapping of Lambert-93 (what rioxarray and GDAL read), with its WKT and ``proj:code``."""
    from pyproj import CRS

    crs = CRS.from_user_input(L93)
    attrs = crs.to_cf()
    attrs["spatial_ref"] = crs.to_wkt()
    attrs["proj:code"] = L93
    return attrs


def pixel_centres(edge: np.ndarray, n: int, step: float) -> np.ndarray:
    """``(chips, n)`` pixel-centre coordinates from each chip's edge and a signed pixel step."""
    return edge[:, None] + (np.arange(n) + 0.5) * step


def chip_transforms(xmin: np.ndarray, ymax: np.ndarray, gsd: float) -> np.ndarray:
    """``(chips, 6)`` affine coefficients ``a b c d e f`` (rasterio order; pixel corners)."""
    t = np.zeros((len(xmin), 6), np.float64)
    t[:, 0], t[:, 2], t[:, 4], t[:, 5] = gsd, xmin, -gsd, ymax
    return t


#: The GeoZarr conventions the arrays and groups declare (``zarr_conventions``, as registered: v1).
ZARR_CONVENTIONS = [
    {"schema_url": "https://raw.githubusercontent.com/zarr-conventions/geo-proj/refs/tags/v1/schema.json",
     "spec_url": "https://github.com/zarr-conventions/geo-proj/blob/v1/README.md",
     "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f", "name": "proj",
     "description": "Coordinate reference system information for geospatial data"},
    {"schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
     "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
     "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4", "name": "spatial",
     "description": "Spatial coordinate information"},
]
#: ``spatial:transform_type`` of a chip stack: every chip has its own affine (a custom type, as the
#: convention allows), row ``i`` of the group's ``spatial_transform`` array in ``spatial:transform``
#: order; one ``spatial:transform`` cannot describe chips with different origins.
PER_CHIP_AFFINE = "msc-france:per-chip-affine"


def geozarr_attrs(n: int) -> dict[str, Any]:
    """The GeoZarr ``proj:`` and ``spatial:`` attributes of ``n x n`` pixel chips (arrays and groups)."""
    return {"zarr_conventions": ZARR_CONVENTIONS, "proj:code": L93, "spatial:dimensions": ["y", "x"],
            "spatial:shape": [n, n], "spatial:registration": "pixel", "spatial:transform_type": PER_CHIP_AFFINE,
            "msc_france:transform_array": "spatial_transform"}


def _pixel_attrs(extra: dict[str, Any], n: int, coords: str = PIXEL_COORDS) -> dict[str, Any]:
    return {"grid_mapping": "spatial_ref", "coordinates": coords, **geozarr_attrs(n), **extra}


def create_layout(root: zarr.Group, schema: StoreSchema) -> None:
    """Create every array of an empty store (no chips yet) and the root attributes."""
    s = schema.chips_per_shard
    for name, dtype in (("chip_id", str), ("split", str), ("chip_xmin", "float64"), ("chip_ymax", "float64")):
        root.create_array(name, shape=(0,), chunks=(4096,), dtype=dtype, dimension_names=["chip"],
                          fill_value="" if dtype is str else 0.0)
    grid_mapping = grid_mapping_attrs()
    for L in schema.layers:
        g = root.create_group(L.group)
        n = L.pixels(schema.chip_size_m)
        _pixel_arrays(g, L, n, s, grid_mapping)
        if not L.is_label:
            b = g.create_array("band", shape=(len(L.bands),), dtype=str, dimension_names=["band"], fill_value="")
            b[:] = np.array(L.bands)
        for f in L.overviews:
            og = root.create_group(overview_path(L.group, f))
            _pixel_arrays(og, L, n // f, s, grid_mapping, "y x spatial_ref")
            og.attrs.update({"factor": f, "gsd": L.gsd * f, "chip_shape": [n // f, n // f],
                             "resampling": "mean of the valid full-resolution pixels; valid where at least half are"})
        for name, dtype, fill, attrs in (
            ("chip_id", str, "", {}),
            ("chip_xmin", "float64", 0.0, {"units": "m", "long_name": "chip west edge, Lambert-93"}),
            ("chip_ymax", "float64", 0.0, {"units": "m", "long_name": "chip north edge, Lambert-93"}),
            ("status", "uint8", 0, {"flag_values": [k.code for k in Status], "flag_meanings": " ".join(k.value for k in Status)}),
            ("datetime", "int64", 0, {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"}),
            ("item_ids", str, "", {"long_name": "source STAC item ids, comma-separated"}),
            ("cloud_fraction", "float32", np.nan, {"long_name": "cloud/shadow fraction of covered pixels"}),
            ("valid_fraction", "float32", np.nan, {"long_name": "fraction of valid pixels"}),
            ("harmonization", str, "", {"long_name": "radiometric harmonisation applied"}),
        ):
            g.create_array(name, shape=(0,), chunks=(4096,), dtype=dtype, fill_value=fill,
                           dimension_names=["chip"], attributes=attrs)
        g.attrs.update(group_attrs(L, schema.chip_size_m))
        if L.overviews:  # GeoZarr-style: the levels, finest first, each with its cell size
            g.attrs["multiscales"] = {"layout": [{"group": ".", "factor": 1, "gsd": L.gsd}] + [
                {"group": f"{OVERVIEWS}/{f}", "factor": f, "gsd": L.gsd * f} for f in L.overviews],
                "resampling_method": "average"}
        if L.is_label and schema.classes:
            g.attrs["classes"] = {str(k): v for k, v in schema.classes.items()}
            g.attrs["class_index"] = {str(k): i for i, k in enumerate(sorted(schema.classes))}


def _pixel_arrays(g: zarr.Group, L: Layer, n: int, s: int, grid_mapping: dict[str, Any],
                  coords: str = PIXEL_COORDS) -> None:
    """A level's pixel arrays (image or class, valid) and its per-chip coordinates (x, y, transform)."""
    pixel = {"nodata": 0, "scale": L.scale, "offset": L.offset}
    if L.is_label:
        g.create_array(L.data_name, shape=(0, n, n), chunks=(1, n, n), shards=(s, n, n), dtype=L.dtype,
                       compressors=COMPRESSOR, fill_value=0, dimension_names=["chip", "y", "x"],
                       attributes=_pixel_attrs({"nodata": 0, "long_name": "land-cover class code"}, n, coords))
    else:
        nb = len(L.bands)
        g.create_array(L.data_name, shape=(0, nb, n, n), chunks=(1, nb, n, n), shards=(s, nb, n, n),
                       dtype=L.dtype, compressors=COMPRESSOR, fill_value=0,
                       dimension_names=["chip", "band", "y", "x"], attributes=_pixel_attrs(pixel, n, coords))
    g.create_array("valid", shape=(0, n, n), chunks=(1, n, n), shards=(s, n, n), dtype="uint8",
                   compressors=COMPRESSOR, fill_value=0, dimension_names=["chip", "y", "x"],
                   attributes=_pixel_attrs({"flag_values": [0, 1], "flag_meanings": "invalid valid"}, n, coords))
    sr = g.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0, attributes=grid_mapping)
    sr[...] = 0
    for axis, std in (("x", "projection_x_coordinate"), ("y", "projection_y_coordinate")):
        g.create_array(axis, shape=(0, n), chunks=(256, n), dtype="float64", fill_value=0.0,
                       dimension_names=["chip", axis],
                       attributes={"standard_name": std, "units": "m", "axis": axis.upper(),
                                   "long_name": f"pixel-centre {axis}, Lambert-93 (per chip)"})
    g.create_array("spatial_transform", shape=(0, 6), chunks=(4096, 6), dtype="float64", fill_value=0.0,
                   dimension_names=["chip", "affine"],
                   attributes={"long_name": "per-chip affine transform a b c d e f (rasterio order, pixel "
                                            "corners): x = a col + b row + c, y = d col + e row + f",
                               "proj:code": L93})


def group_attrs(L: Layer, chip_size_m: int) -> dict[str, Any]:
    """Attributes of one sensor's group."""
    n = L.pixels(chip_size_m)
    return {
        "sensor": L.sensor, "bands": list(L.bands), "gsd": L.gsd, "dtype": L.dtype, "nodata": 0,
        "scale": L.scale, "offset": L.offset, "units": L.units, "grid_mapping": "spatial_ref", **geozarr_attrs(n),
        "chip_shape": [n, n],
        "chip_transform": "spatial_transform[i] = (gsd, 0, chip_xmin[i], 0, -gsd, chip_ymax[i]), pixel corners",
        **({FACTS_ATTR: L.facts.to_json()} if L.facts is not None else {}),
    }
