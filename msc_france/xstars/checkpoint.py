"""Checkpoints: written atomically, read with ``weights_only=True`` (no pickled code), RNG states as
tensors; the backbone of a checkpoint for evaluation and continual pretraining.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msc_france.errors import BadInputError, TrainingError, first_line
from msc_france.fsutil import atomic_path
from msc_france.xstars.vit import ARCHS, ViT

CKPT_FORMAT = "msc-france-xstars-1"


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, ints and strings only, so checkpoints load with
    ``weights_only=True`` (no pickled objects, no code execution).
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pstate, pgauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(pstate, dtype=torch.int64),
                   "gauss": None if pgauss is None else float(pgauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore every RNG from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`pretrain`, with one-line errors.

    The file's container is checked first (torch's zip format), then it is read with
    ``weights_only=True``: tensors and plain values only, so a crafted pickle cannot run code.
    """
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"checkpoint not found: {p}")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise TrainingError(f"cannot read checkpoint {p}: {e.strerror}") from None
    if magic != b"PK\x03\x04":
        raise TrainingError(f"cannot read checkpoint {p}: not a PyTorch zip checkpoint")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise TrainingError(f"cannot read checkpoint {p}: {first_line(e)[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise TrainingError(f"{p} is not an msc-france X-STARS checkpoint")
    return ckpt


def build_backbone(ckpt: dict[str, Any], which: str = "teacher") -> ViT:
    """The ViT of a checkpoint (``teacher`` backbone by default, as DINO evaluates).

    The declared architecture is checked against the tensors before any model is built: a crafted
    ``img_size`` of 32,768 would otherwise allocate gigabytes of position embeddings.

    Raises:
        TrainingError: the declaration and the tensors disagree, or the weights do not load.
    """
    try:
        m = ckpt["model"]
        prefix = "backbone."
        sd = {k[len(prefix):]: v for k, v in ckpt[which].items() if k.startswith(prefix)}
        arch, patch, img = str(m["arch"]), int(m["patch_size"]), int(m["img_size"])
        sensors = {str(k): int(v) for k, v in dict(ckpt["sensors"]).items()}
        pos = sd.get("pos_embed")
        if arch not in ARCHS or pos is None or patch < 1 or img < patch:
            raise ValueError(f"declares {arch}/{patch} at {img} px without matching weights")
        want = (1, 1 + (img // patch) ** 2, ARCHS[arch]["dim"])
        if tuple(pos.shape) != want:
            raise ValueError(f"declares {arch}/{patch} at {img} px ({want}), its pos_embed is {tuple(pos.shape)}")
        if not sensors or any(c < 1 or c > 1024 for c in sensors.values()):
            raise ValueError(f"declares sensors {sensors}")
        vit = ViT(sensors, arch, patch, img, drop_path=0.0, patch_embed=m.get("patch_embed", "per-sensor"))
        vit.load_state_dict(sd)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise TrainingError(f"checkpoint does not describe its own weights: {first_line(e)[:200]}") from None
    return vit


def write_checkpoint(obj: Any, path: Path) -> None:
    """Write a checkpoint through a temp file and a rename; a failed write leaves nothing behind.

    torch reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc...] file
    write failed``: it becomes the OSError (ENOSPC) the CLI reports as "No space left on device".
    """
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except RuntimeError as e:
        if "write failed" in str(e) or "enforce fail" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
