"""Helpers shared by several test modules (not tests themselves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msc_france.xstars.config import TrainConfig


def train_config(store: Path, out: Path, **changes: Any) -> TrainConfig:
    """A seconds-long X-STARS config on the tiny store; ``section__key=value`` overrides a value."""
    d: dict[str, Any] = {
        "name": "test",
        "data": {"store": str(store), "sensors": ["sentinel-2-l2a", "landsat-8-c2-l2", "aerial"],
                 "bands": ["red", "green", "blue"], "split": None, "size": 32, "num_workers": 0, "cache": True},
        "model": {"arch": "vit_test", "patch_size": 8, "drop_path": 0.1},
        "dino": {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32, "global_crops": 2, "local_crops": 2,
                 "global_size": 32, "local_size": 16},
        "msad": {"alpha": 0.5, "proj_dim": 32, "size": 32},
        "optim": {"steps": 40, "batch_size": 4, "lr": 0.02, "warmup_steps": 3},
        "run": {"out": str(out), "seed": 0, "checkpoint_every": 10},
    }
    for k, v in changes.items():
        sec, key = k.split("__")
        d[sec][key] = v
    return TrainConfig.model_validate(d)


def one_provider_yaml(catalog: str, sensor: str) -> dict[str, Any]:
    """A shipped sensor YAML as a dict with its first provider as ``source`` (the shape tests edit:
    the default catalog's satellites list several providers).
    """
    import yaml

    from msc_france.paths import catalogs_dir

    spec = yaml.safe_load((catalogs_dir() / catalog / f"{sensor}.yaml").read_text())
    if "sources" in spec:
        spec["source"] = spec.pop("sources")[0]
    return spec


#: Real product files of the workplace (``../shared/realdata`` from the project root; see its README).
REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def realdata(*parts: str) -> Path:
    """A path under :data:`REALDATA`; skips the calling test when the folder is absent."""
    import pytest

    p = REALDATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real product files not available here ({p} is absent: a clone outside the workplace)")
    return p
