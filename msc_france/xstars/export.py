"""An encoder for others, and back: :func:`export_model` writes a checkpoint's encoder as
``model.safetensors`` (timm's key layout, one ``patch_embed.<sensor>`` per sensor), ``config.json``
(the architecture and the model's :class:`~msc_france.xstars.inputs.ModelInputs`) and a model card;
:func:`load_encoder` reads such a folder back into an encoder that normalises its own inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msc_france.errors import TrainingError, first_line
from msc_france.fsutil import check_regular
from msc_france.store.schema import SensorFacts
from msc_france.xstars.checkpoint import Checkpoint, build_backbone, check_weight, load_checkpoint
from msc_france.xstars.inputs import ModelInputs
from msc_france.xstars.vit import ARCHS, ViT

#: ``config.json``'s ``format``: what :func:`load_encoder` reads.
EXPORT_FORMAT = "msc-france-encoder-1"
#: The largest ``config.json`` read (a model's is a few kilobytes).
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Encoder:
    """A trained encoder and what it eats.

    Attributes:
        vit: the backbone (eval mode).
        inputs: its sensors, bands, statistics, input size and architecture.
        meta: the rest of ``config.json`` (source checkpoint, step, network).
    """

    vit: ViT
    inputs: ModelInputs
    meta: dict[str, Any]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sensor: str) -> torch.Tensor:
        """(N, bands, S, S) images in the store's stored units -> (N, 1 + patches, dim) tokens, CLS
        first, normalised with the model's own statistics.
        """
        return self.vit(self.inputs.normalize(x, sensor), sensor)


def _sensor_facts(ckpt: Checkpoint) -> dict[str, SensorFacts]:
    """The training store's facts per sensor (licence, provenance), when the store is a local
    folder that still holds them; a URL written in a model file is never opened.
    """
    from msc_france.store import Store

    store_path = ckpt.config.data.store
    if "://" in store_path or not Path(store_path).is_dir():
        return {}
    try:
        st = Store.open(store_path)
        return {s: st.facts(s) for s in ckpt.sensors}
    except Exception:  # noqa: BLE001 (moved or damaged: the export goes on without them, and says so)
        return {}


def export_model(checkpoint: Path, out: Path, which: str = "teacher") -> list[Path]:
    """Write the ``which`` network's encoder of ``checkpoint`` (a file or a run folder) into ``out``.

    Raises:
        TrainingError: an unreadable checkpoint. BadInputError: an ``out`` that is not ours.
    """
    from msc_france.fsutil import output_dir, refuse_inside_store
    from msc_france.xstars.weights import export_encoder

    path = checkpoint / "checkpoints" / "last.pt" if checkpoint.is_dir() else checkpoint
    ckpt = load_checkpoint(path)
    vit = build_backbone(ckpt, which)
    refuse_inside_store(out, "export-model folder")
    facts = _sensor_facts(ckpt)
    meta = {"format": EXPORT_FORMAT, "inputs": ckpt.inputs.to_json(),
            "licences": {s: f.licence for s, f in facts.items()} or "unknown (the training store was not found)",
            "source": {"checkpoint": str(path), "step": ckpt.step, "network": which},
            "load_with": "msc_france.xstars.export.load_encoder(folder)"}
    with output_dir(out, "export-model"):
        return export_encoder(vit, out, meta, model_card(ckpt, which, facts))


def model_card(ckpt: Checkpoint, which: str, facts: dict[str, SensorFacts]) -> str:
    """README.md of an exported encoder: what it is, what it saw, how to load it."""
    m, data, inputs = ckpt.model, ckpt.config.data, ckpt.inputs
    lines = [f"# {ckpt.config.name} encoder ({m.arch}/{m.patch_size}, {which})", "",
             f"Trained with msc-france for {ckpt.step} steps on `{data.store}` (split `{data.split}`), "
             f"input {inputs.input_size} px.", "",
             "| sensor | bands | GSD (m) | source | data licence |", "|---|---|---|---|---|"]
    for s, v in inputs.sensors.items():
        f = facts.get(s)
        lines.append(f"| {f.title if f else s} | {', '.join(v.bands)} | {v.gsd_m if v.gsd_m is not None else '?'} | "
                     f"{f.provenance if f else '?'} | {f.licence if f else '?'} |")
    lines += ["", "Evaluation: `msc-france eval --checkpoint` on the run's checkpoint scores it against the "
              "learning-free baselines (docs/results.md); the numbers are not copied here.", "",
              "What it eats (bands in order, statistics in the store's stored units) is `inputs` in "
              "config.json; `load_encoder` applies it.", "", "## Loading", "", "```python",
              "from msc_france.xstars.export import load_encoder", "",
              "enc = load_encoder('.')  # the ViT and its inputs",
              f"tokens = enc(images, '{next(iter(inputs.sensors))}')  # stored values in, normalised inside", "```",
              "", "Without msc-france: `model.safetensors` is in timm's key layout with one "
              "`patch_embed.<sensor>.proj` per sensor; copy one to `patch_embed.proj` for a timm ViT.", ""]
    return "\n".join(lines)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    check_regular(path, "encoder config")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise TrainingError(f"{path} is {path.stat().st_size:,} bytes, not an encoder's config")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"cannot read {path}: {first_line(e)[:200]}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != EXPORT_FORMAT:
        raise TrainingError(f"{path} is not an msc-france encoder export (format {EXPORT_FORMAT})")
    return cfg


def load_encoder(folder: str | Path) -> Encoder:
    """The encoder :func:`export_model` wrote into ``folder``, with its input contract.

    Every tensor is checked (bounded, floating point, finite) and the weights must fill the
    declared architecture exactly.

    Raises:
        TrainingError: a folder that is not an export, or weights that do not fit it.
    """
    from safetensors.torch import load_file

    from msc_france.xstars.weights import from_timm

    root = Path(folder).expanduser()
    cfg = _read_config(root)
    try:
        inputs = ModelInputs.from_json(cfg["inputs"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TrainingError(f"{root / 'config.json'} does not say what the model eats: {first_line(e)[:200]}") \
            from None
    m = inputs.model
    if m.arch not in ARCHS or m.patch_size < 1 or not m.patch_size <= m.img_size <= 8192:
        raise TrainingError(f"{root / 'config.json'} declares {m.arch}/{m.patch_size} at {m.img_size} px")
    weights = root / "model.safetensors"
    check_regular(weights, "encoder weights")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # a truncated or foreign file
        raise TrainingError(f"cannot read {weights}: {first_line(e)[:200]}") from None
    for k, v in tensors.items():
        check_weight(v, f"{weights}: {k}")
    vit = ViT(inputs.channels, m.arch, m.patch_size, m.img_size, drop_path=0.0, patch_embed=m.patch_embed)
    try:
        vit.load_state_dict(from_timm(tensors), strict=True)
    except RuntimeError as e:
        raise TrainingError(f"{weights} does not fit {m.arch}/{m.patch_size} with sensors "
                            f"{inputs.channels}: {first_line(e)[:200]}") from None
    return Encoder(vit.eval(), inputs, {k: v for k, v in cfg.items() if k != "inputs"})


__all__ = ["EXPORT_FORMAT", "Encoder", "export_model", "load_encoder", "model_card"]
