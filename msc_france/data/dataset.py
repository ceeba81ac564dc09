"""``MSCFranceDataset``: one sample per selected chip (:mod:`msc_france.selection`), read as a
:class:`DatasetView` says: every requested sensor, normalised with the store's or a model's statistics.

Samples follow torchgeo's conventions where they can (docs/training.md, "The sample"):

- per sensor, ``{"image": float32 (bands, H, W), "valid": bool (H, W)}`` (``valid``, ``bounds`` and
  ``crs`` only with ``extras``, the default; training turns them off);
- ``mask``: the labels as contiguous class indices, int64 (H, W), :data:`IGNORE_INDEX` where there
  is no label (PyTorch's ``cross_entropy`` default), when ``labels=True``; the code <-> index
  mapping is the store's (``classes`` and ``class_index`` of its labels group);
- ``bounds``: a :class:`BoundingBox` with torchgeo's fields (minx, maxx, miny, maxy, mint, maxt),
  Lambert-93 metres and POSIX seconds of the earliest and latest acquisition of the sensors read;
- ``crs``: a ``rasterio.crs.CRS`` (EPSG:2154); ``chip_id`` and, with tiles, ``tile``.

The Zarr store is opened lazily in each process that reads it (the DataLoader's workers included,
fork or spawn): an open store is never shared across a fork.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rasterio.crs import CRS as RioCRS
from torch.utils.data import Dataset

from msc_france.data.batch import Sample
from msc_france.errors import BadInputError, StoreError
from msc_france.grid import Chip
from msc_france.selection import ChipSelection, select
from msc_france.store import ChipReader, Store
from msc_france.store.chip_index import ChipIndex
from msc_france.xstars.inputs import ModelInputs


@functools.lru_cache(maxsize=64)
def _crs_from_wkt(wkt: str) -> RioCRS:
    return RioCRS.from_wkt(wkt)


def _reduce_crs(crs: RioCRS) -> tuple[Callable[[str], RioCRS], tuple[str]]:
    return _crs_from_wkt, (crs.to_wkt(),)


# Batches cross from DataLoader workers to the trainer by multiprocessing's pickler; rebuilding a
# rasterio CRS from its WKT costs ~4 ms (PROJ parses it), once per batch: rebuild each CRS once per
# process instead (a CRS is immutable, so the cached one can be shared).
ForkingPickler.register(RioCRS, _reduce_crs)

#: Label index of pixels without a label (``torch.nn.functional.cross_entropy``'s default ignore_index).
IGNORE_INDEX = -100
CRS = RioCRS.from_epsg(2154)


class BoundingBox(NamedTuple):
    """A sample's extent with torchgeo's field names and order: x, y in metres, t in POSIX seconds."""

    minx: float
    maxx: float
    miny: float
    maxy: float
    mint: float
    maxt: float


@dataclass(frozen=True)
class DatasetView:
    """How the selected chips are read and shaped.

    Attributes:
        sensors: store groups to return (default: every reflectance sensor).
        bands: band names to keep, the same for every sensor (e.g. ``("red", "green", "blue")``),
            or per sensor; None keeps each sensor's bands.
        size: resize every sensor's chip to ``size`` x ``size`` pixels on load (area-antialiased
            bilinear for images, nearest for masks and labels), as X-STARS feeds every sensor at
            one input size; the chip extent is unchanged, so sensors stay co-located. Images are
            read from the coarsest overview level that still has at least that many pixels.
        tiles: cut every chip into ``tiles x tiles`` co-located sub-chips (each a sample, with its
            own ``bounds`` and a ``tile`` (row, col) key); with ``size``, the whole chip is resized
            to ``tiles x size`` and the tiles are cut from it.
        labels: also return ``mask`` (class indices) when the store has labels.
        overviews: read overview levels where they fit (False: always full resolution).
        cache: keep decoded (and resized) chips in memory, per process: True keeps every chip,
            an integer keeps the last that many chips per sensor (least recently used out first).
        normalize: standardise with the store's per-band statistics (True), not at all (False),
            or with a model's own (its :class:`~msc_france.xstars.inputs.ModelInputs`).
        extras: ship ``valid``, ``bounds`` and ``crs`` in each sample (training reads none).
    """

    sensors: tuple[str, ...] | None = None
    bands: tuple[str, ...] | Mapping[str, Sequence[str]] | None = None
    size: int | None = None
    tiles: int = 1
    labels: bool = False
    overviews: bool = True
    cache: bool | int = False
    normalize: bool | ModelInputs = True
    extras: bool = True

    def __post_init__(self) -> None:
        if self.tiles < 1:
            raise BadInputError("tiles must be >= 1")
        if not isinstance(self.cache, bool) and self.cache < 1:
            raise BadInputError("cache must be True, False or a number of chips >= 1")

    def bands_of(self, sensor: str, stored: Sequence[str]) -> list[str]:
        """The band names read from ``sensor`` (whose store bands are ``stored``)."""
        if self.bands is None:
            return list(stored)
        if isinstance(self.bands, Mapping):
            return list(self.bands[sensor]) if sensor in self.bands else list(stored)
        return list(self.bands)


_SELECTION_ARGS = {"split", "statuses", "where", "chips", "groups"}
_VIEW_ARGS = set(DatasetView.__dataclass_fields__)


class MSCFranceDataset(Dataset):
    """Chips of an MSC-France store: the chips a :class:`~msc_france.selection.ChipSelection` keeps,
    read as a :class:`DatasetView` says.

    Args:
        store: path or URL of the store.
        selection: which chips (default: the ``train`` split, status ``ok`` in every sensor read).
        view: how they are read (default: every reflectance sensor, all bands, stored size).
        transform: applied to each sample dict.
        **shorthand: the fields of either value by name, torchgeo-style (``split="val", size=64``);
            given with ``selection`` or ``view`` they replace those fields.

    Raises:
        BadInputError: an unknown sensor, band, split, chip or argument, or tiles that do not
            divide a chip.
    """

    def __init__(self, store: str | Path, selection: ChipSelection | None = None, view: DatasetView | None = None,
                 transform: Callable[[Sample], Sample] | None = None, **shorthand: Any) -> None:
        unknown = sorted(set(shorthand) - _SELECTION_ARGS - _VIEW_ARGS)
        if unknown:
            raise TypeError(f"MSCFranceDataset got unknown argument(s) {', '.join(unknown)}")
        sel = {k: v for k, v in shorthand.items() if k in _SELECTION_ARGS}
        if selection is None or sel:
            base = selection or ChipSelection()
            selection = ChipSelection.of(**{"split": base.splits, "statuses": base.statuses, "where": base.where,
                                            "chips": base.chips, "groups": base.groups, **sel})
        vw: dict[str, Any] = {k: (tuple(v) if k == "sensors" and v is not None else v)
                              for k, v in shorthand.items() if k in _VIEW_ARGS}
        if vw.get("bands") is not None and not isinstance(vw["bands"], Mapping):
            vw["bands"] = tuple(vw["bands"])
        view = replace(view or DatasetView(), **vw)
        self.path, self.selection, self.view, self.transform = str(store), selection, view, transform
        s = Store.open(self.path)
        layers = {L.group: L for L in s.layers}
        self.sensors = list(view.sensors) if view.sensors else [g for g, L in layers.items() if not L.is_label]
        self.labels = view.labels and "labels" in layers
        self._read_layers(s, layers)
        self._select(s)
        self._store: Store | None = None
        self._reader: ChipReader | None = None
        self._pid: int | None = None

    @property
    def size(self) -> int | None:
        """The side every chip (tile) is resized to (None: stored size)."""
        return self.view.size

    @property
    def tiles(self) -> int:
        """Tiles per chip side."""
        return self.view.tiles

    @property
    def cache(self) -> bool | int:
        """The decoded-chip cache setting."""
        return self.view.cache

    @property
    def normalize(self) -> bool:
        """Whether images are standardised (with the store's or the model's statistics)."""
        return self.view.normalize is not False

    def _read_layers(self, s: Store, layers: dict[str, Any]) -> None:
        """Per sensor: bands read, normalisation, overview level; the label classes."""
        view = self.view
        #: class code -> contiguous index, and index -> class name (from the store's labels group).
        self.class_index: dict[int, int] = {}
        self.class_names: dict[int, str] = {}
        self._lut = np.full(256, IGNORE_INDEX, np.int64)
        if self.labels:
            classes = s.classes()
            self.class_index, names = dict(classes.index), classes.names
            self.class_names = {i: names[c] for c, i in self.class_index.items()}
            for code, i in self.class_index.items():
                self._lut[code] = i
        if isinstance(view.normalize, ModelInputs):
            view.normalize.check_store(s, self.sensors, "the model")
        self.band_index: dict[str, list[int]] = {}
        self.band_names: dict[str, list[str]] = {}
        self.mean: dict[str, torch.Tensor] = {}
        self.std: dict[str, torch.Tensor] = {}
        #: Per sensor, the overview factor read (1: full resolution).
        self.levels: dict[str, int] = {}
        for name in self.sensors:
            if name not in layers or layers[name].is_label:
                raise BadInputError(f"store {self.path} has no sensor '{name}' (has {sorted(layers)})")
            L = layers[name]
            wanted = (list(view.normalize.sensors[name].bands) if isinstance(view.normalize, ModelInputs)
                      and name in view.normalize.sensors else view.bands_of(name, L.bands))
            missing = [b for b in wanted if b not in L.bands]
            if missing:
                raise BadInputError(f"sensor {name} has no band(s) {missing} (has {list(L.bands)})")
            self.band_index[name] = [L.bands.index(b) for b in wanted]
            self.band_names[name] = wanted
            self._norm(s, name)
            px = L.pixels(s.chip_size_m)
            if px % view.tiles:
                raise BadInputError(f"{name} chips are {px} px, not divisible into {view.tiles} x {view.tiles} tiles")
            need = None if view.size is None else view.size * view.tiles
            usable = [f for f in L.overviews if view.overviews and need is not None and px // f >= need]
            self.levels[name] = max(usable, default=1)

    def _norm(self, s: Store, name: str) -> None:
        """The mean and std a sensor's images are standardised with (the store's or the model's)."""
        norm = self.view.normalize
        if isinstance(norm, ModelInputs) and name in norm.sensors:
            v = norm.sensors[name]
            mean, std = list(v.mean), list(v.std)
        else:
            stats = s.stats(name)
            if norm is not False and not stats:
                raise StoreError(f"store {self.path} has no statistics for {name}; rebuild it")
            if not stats:
                return
            idx = self.band_index[name]
            mean, std = [stats.mean[i] for i in idx], [max(stats.std[i], 1e-6) for i in idx]
        self.mean[name] = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std[name] = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def _select(self, s: Store) -> None:
        """The selected chips, their statuses and acquisition times."""
        self._chips: OrderedDict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        rows = select(s.index(), self.selection, self.path, self.sensors)
        self.chip_ids: list[str] = rows["chip_id"].tolist()
        self.chip_index: list[int] = rows["chip_index"].astype(int).tolist()
        self._members = frozenset(self.chip_index)
        self.status = {name: ChipIndex(rows).status(name).tolist() for name in self.sensors}
        # Acquisition times per chip and sensor (POSIX seconds, NaN when unknown) for ``bounds``.
        self._times = {name: (ChipIndex(rows).datetime(name) - pd.Timestamp(0, tz="UTC"))
                       .dt.total_seconds().to_numpy() for name in self.sensors}

    def with_view(self, **changes: Any) -> MSCFranceDataset:
        """The same chips read another way (``sensors``, ``normalize``, ... replaced): the statuses
        are still those of this dataset's sensors, so a subset of sensors keeps every chip.
        """
        if "sensors" in changes and changes["sensors"] is not None:
            changes["sensors"] = tuple(changes["sensors"])
        selection = replace(self.selection, groups=self.selection.groups or tuple(self.sensors))
        out = MSCFranceDataset(self.path, selection, replace(self.view, **changes), self.transform)
        assert out.chip_ids == self.chip_ids
        return out

    def __len__(self) -> int:
        return len(self.chip_ids) * self.tiles**2

    def _open(self) -> Store:
        # One handle per process: DataLoader workers (fork or spawn) each open their own.
        if self._store is None or self._pid != os.getpid():
            self._store = Store.open(self.path)
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None
        state["_reader"] = None
        state["_pid"] = None
        return state

    def read(self, i: int, sensors: Sequence[str] | None = None) -> Sample:
        """Sample ``i`` with the given sensors (default: all), before ``transform``."""
        return self._read(i, tuple(sensors or self.sensors))

    def _read(self, i: int, sensors: Sequence[str]) -> Sample:
        store = self._open()
        k = self.tiles
        c, t = divmod(i, k * k)
        tr, tc = divmod(t, k)
        ci = self.chip_index[c]
        chip = Chip.from_id(self.chip_ids[c])
        x0, y0, x1, y1 = chip.bounds
        step = (x1 - x0) / k
        times = [float(self._times[s][c]) for s in sensors if np.isfinite(self._times[s][c])]
        bounds = BoundingBox(x0 + tc * step, x0 + (tc + 1) * step, y1 - (tr + 1) * step, y1 - tr * step,
                             min(times, default=float("nan")), max(times, default=float("nan")))
        sample: Sample = {"chip_id": self.chip_ids[c]}
        if self.view.extras:
            sample["bounds"], sample["crs"] = bounds, CRS
        if k > 1:
            sample["tile"] = (tr, tc)

        def cut(a: torch.Tensor) -> torch.Tensor:
            n = a.shape[-1] // k
            return a[..., tr * n : (tr + 1) * n, tc * n : (tc + 1) * n]

        for name in sensors:
            img, mask = self._chip(store, ci, name)
            sample[name] = {"image": cut(img), "valid": cut(mask)} if self.view.extras else {"image": cut(img)}
        if self.labels:
            sample["mask"] = cut(self._chip(store, ci, "labels")[0])
        return sample

    def _chip(self, store: Store, ci: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One sensor's whole chip (image, valid), normalised and resized to ``tiles x size``; for
        ``labels``, (class indices, their validity). Cached per process when ``cache`` is on.

        With a cache that holds a shard, a miss reads this dataset's chips of the whole shard in
        one call (zarr's per-call cost is several times a small chip's decoding) and caches them.
        """
        key = (ci, name)
        if key in self._chips:
            self._chips.move_to_end(key)
            return self._chips[key]
        per = store.chips_per_shard
        whole = self.cache is True or (bool(self.cache) and int(self.cache) >= per)
        if whole:
            s0 = ci // per * per
            wanted = [c for c in range(s0, s0 + per) if c in self._members and (c, name) not in self._chips]
        else:
            wanted = [ci]
        lo, hi = min(wanted), max(wanted) + 1
        if name == "labels":
            raw = self._arrays(store, "labels", ("class",), lo, hi, 1)
            prepared = {c: self._prepare_labels(raw[0][c - lo]) for c in wanted}
        else:
            f = self.levels[name]
            img, valid = self._arrays(store, name, ("image", "valid"), lo, hi, f)
            prepared = {c: self._prepare(name, img[c - lo], valid[c - lo]) for c in wanted}
        out = prepared[ci]
        if self.cache:
            for c in wanted:
                self._chips[(c, name)] = prepared[c]
            if self.cache is not True:  # an LRU of ``cache`` chips per sensor
                while len(self._chips) > int(self.cache) * (len(self.sensors) + self.labels):
                    self._chips.popitem(last=False)
        return out

    def _prepare(self, name: str, raw: np.ndarray, valid: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        side = None if self.size is None else self.size * self.tiles
        img = torch.from_numpy(raw[self.band_index[name]].astype(np.float32))
        mask = torch.from_numpy(valid.astype(bool))
        if side is not None and img.shape[-1] != side:
            img = F.interpolate(img[None], size=(side, side), mode="bilinear", align_corners=False,
                                antialias=img.shape[-1] > side)[0]
            mask = F.interpolate(mask[None, None].float(), size=(side, side), mode="nearest")[0, 0] > 0.5
        if self.normalize:  # after the resize (its weights sum to 1, so the result is the same): fewer pixels
            img = (img - self.mean[name]) / self.std[name]
        return img, mask

    def _prepare_labels(self, raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        side = None if self.size is None else self.size * self.tiles
        lab = torch.from_numpy(self._lut[raw])
        if side is not None and lab.shape[-1] != side:
            lab = F.interpolate(lab[None, None].float(), size=(side, side), mode="nearest")[0, 0].long()
        return lab, lab != IGNORE_INDEX

    def _arrays(self, store: Store, group: str, arrays: tuple[str, ...], lo: int, hi: int,
                factor: int) -> list[np.ndarray]:
        # Through the checked read path: a missing or damaged shard is a StoreError, never zeros.
        if self._reader is None or self._reader.store is not store:
            self._reader = ChipReader(store)
        return [self._reader.read_range(group, a, lo, hi, factor) for a in arrays]

    def __getitem__(self, key: int | tuple[int, str]) -> Sample:
        # A sampler may yield (index, sensor) to ask for a single sensor (see SensorBalancedSampler).
        if isinstance(key, tuple):
            i, sensor = key
            sample = self.read(int(i), [sensor])
            sample["sensor"] = sensor
        else:
            sample = self.read(int(key))
        return self.transform(sample) if self.transform else sample
