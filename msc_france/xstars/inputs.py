"""What a model eats: one frozen :class:`ModelInputs` written into every checkpoint and every
export, and read by everything that feeds the model (eval, export, continual import,
:func:`~msc_france.xstars.export.load_encoder`).

A model trained on one store and evaluated on another is fed the other store's pixels normalised
with *its own* statistics (the training chips'), never the new store's: the features of the same
ground are then the same whichever store holds it. A store that lacks a sensor or a band the
model was trained on is refused before anything is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from msc_france.errors import BadInputError


@dataclass(frozen=True)
class ModelSpec:
    """The backbone: architecture, patch size, the input size its position embeddings were made
    for, and how sensors are embedded.
    """

    arch: str
    patch_size: int
    img_size: int
    patch_embed: str = "per-sensor"

    def to_json(self) -> dict[str, Any]:
        """Plain values, as stored."""
        return {"arch": self.arch, "patch_size": self.patch_size, "img_size": self.img_size,
                "patch_embed": self.patch_embed}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Parse the stored form (KeyError, TypeError or ValueError when it is not one)."""
        return cls(str(d["arch"]), int(d["patch_size"]), int(d["img_size"]), str(d.get("patch_embed", "per-sensor")))


@dataclass(frozen=True)
class SensorInput:
    """One sensor as the model reads it: band names in input order and the per-band statistics
    the images are standardised with, in stored units; ``gsd_m`` the ground sampling distance of
    the chips it trained on (None when not known).
    """

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gsd_m: float | None = None

    def __post_init__(self) -> None:
        if not self.bands or len(self.mean) != len(self.bands) or len(self.std) != len(self.bands):
            raise ValueError(f"{len(self.bands)} bands with {len(self.mean)} means and {len(self.std)} stds")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"standard deviations must be positive, got {list(self.std)}")

    def to_json(self) -> dict[str, Any]:
        """Plain values, as stored."""
        return {"bands": list(self.bands), "mean": list(self.mean), "std": list(self.std), "gsd_m": self.gsd_m}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SensorInput:
        """Parse the stored form."""
        gsd = d.get("gsd_m")
        return cls(tuple(str(b) for b in d["bands"]), tuple(float(v) for v in d["mean"]),
                   tuple(float(v) for v in d["std"]), None if gsd is None else float(gsd))


@dataclass(frozen=True)
class ModelInputs:
    """The whole input contract of a model.

    Attributes:
        sensors: sensor (store group) -> how it is read, in the model's sensor order.
        input_size: the side in pixels every sensor's chip (or tile) was resized to in training.
        model: the backbone (architecture, patch size, position-embedding size, embedding scheme).
    """

    sensors: Mapping[str, SensorInput]
    input_size: int
    model: ModelSpec

    @property
    def channels(self) -> dict[str, int]:
        """Sensor -> number of input bands (what the patch embeddings take)."""
        return {s: len(v.bands) for s, v in self.sensors.items()}

    def to_json(self) -> dict[str, Any]:
        """Plain values, as checkpoints and ``config.json`` store them."""
        return {"sensors": {s: v.to_json() for s, v in self.sensors.items()}, "input_size": self.input_size,
                "model": self.model.to_json()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelInputs:
        """Parse the stored form once (KeyError, TypeError or ValueError when it is not one)."""
        sensors = {str(s): SensorInput.from_json(v) for s, v in dict(d["sensors"]).items()}
        if not sensors:
            raise ValueError("no sensors")
        return cls(sensors, int(d["input_size"]), ModelSpec.from_json(d["model"]))

    def normalize(self, x: torch.Tensor, sensor: str) -> torch.Tensor:
        """(N, bands, H, W) or (bands, H, W) stored values -> what the model was trained on."""
        v = self.sensors[sensor]
        mean = torch.tensor(v.mean, dtype=torch.float32, device=x.device)[:, None, None]
        std = torch.tensor(v.std, dtype=torch.float32, device=x.device)[:, None, None]
        return (x - mean) / std

    def check_store(self, store: Any, sensors: Sequence[str] | None = None, what: str = "model") -> None:
        """Refuse a store that lacks a sensor (of ``sensors``, default all of the model's) or one of
        its bands.

        Raises:
            BadInputError: one line naming the sensor or the bands.
        """
        layers = {L.group: L for L in store.layers if not L.is_label}
        for s in sensors if sensors is not None else list(self.sensors):
            if s not in self.sensors:
                continue
            if s not in layers:
                raise BadInputError(f"{what} eats sensor '{s}', which store {store.url} lacks "
                                    f"(it has {', '.join(sorted(layers)) or 'none'})")
            missing = [b for b in self.sensors[s].bands if b not in layers[s].bands]
            if missing:
                raise BadInputError(f"{what} eats band(s) {', '.join(missing)} of '{s}', which store {store.url} "
                                    f"lacks (it has {', '.join(layers[s].bands)})")


def from_stats(store: Any, sensors: Sequence[str], bands: Mapping[str, Sequence[str]], input_size: int,
               model: ModelSpec) -> ModelInputs:
    """The inputs a model fed ``store`` as is would have: its statistics and GSDs (learning-free
    and random baselines, and new training runs).

    Raises:
        BadInputError: a sensor or band the store lacks, or a sensor without statistics.
    """
    out = {}
    for s in sensors:
        L = store.layer(s)
        stats = store.stats(s)
        if not stats:
            raise BadInputError(f"store {store.url} has no statistics for {s}; rebuild it")
        missing = [b for b in bands[s] if b not in L.bands]
        if missing:
            raise BadInputError(f"sensor {s} has no band(s) {missing} (has {list(L.bands)})")
        idx = [L.bands.index(b) for b in bands[s]]
        out[s] = SensorInput(tuple(bands[s]), tuple(stats.mean[i] for i in idx),
                             tuple(max(stats.std[i], 1e-6) for i in idx), float(L.gsd))
    return ModelInputs(out, input_size, model)


__all__ = ["ModelInputs", "ModelSpec", "SensorInput", "from_stats"]
