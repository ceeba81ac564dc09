"""Weights from elsewhere, and weights for others: import timm-, DINO- and X-STARS-style ViT
checkpoints into this project's ViT, and export a trained encoder in timm's key layout.

Importing never loads silently what does not fit (the reference code's ``strict=False`` skips it):
every backbone tensor of the target is either loaded as is, or adapted by a stated rule, or the
import fails; :class:`LoadReport` says which was which.

* **Key layouts.** timm (``patch_embed.proj.weight``, ``blocks.N.mlp.fc1.weight``, ...), DINO and
  the X-STARS authors' checkpoints (a dict with ``student``/``teacher``, keys prefixed ``module.``
  and ``backbone.``, the head under ``head.``), and this project's checkpoints.
* **Position embeddings** trained at another input size: the patch grid is resized by bicubic
  interpolation, the class token kept apart.
* **Input bands** by name: a target sensor's patch-embedding channel takes the source channel of
  the same band (``B04`` and ``red`` are one band); a band the source lacks gets the mean of the
  source's filters, and is reported. Sentinel-2 band ids name themselves; ``ssl4eo-s12`` names the
  13 bands of torchgeo's SSL4EO-S12 weights in their order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from msc_france.errors import BadInputError, TrainingError, first_line
from msc_france.fsutil import check_regular
from msc_france.xstars.checkpoint import check_weight
from msc_france.xstars.vit import ARCHS, ViT

Format = Literal["timm", "dino", "xstars", "msc-france"]

#: Sentinel-2 band ids -> the common names the stores use (STAC eo common names).
S2_COMMON = {"B01": "coastal", "B1": "coastal", "B02": "blue", "B2": "blue", "B03": "green", "B3": "green",
             "B04": "red", "B4": "red", "B05": "rededge1", "B5": "rededge1", "B06": "rededge2", "B6": "rededge2",
             "B07": "rededge3", "B7": "rededge3", "B08": "nir", "B8": "nir", "B8A": "nir08", "B09": "nir09",
             "B9": "nir09", "B10": "cirrus", "B11": "swir16", "B12": "swir22"}
#: Band presets for well-known weights: torchgeo's SSL4EO-S12 (all 13 Sentinel-2 L1C bands).
BAND_PRESETS = {"ssl4eo-s12": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
                               "B12"]}


def band_names(bands: Sequence[str] | str) -> list[str]:
    """Common band names of a list of band names or ids (or a preset name)."""
    if isinstance(bands, str):
        if bands not in BAND_PRESETS:
            raise BadInputError(f"unknown band preset '{bands}' (known: {', '.join(BAND_PRESETS)})")
        bands = BAND_PRESETS[bands]
    return [S2_COMMON.get(b.upper(), b.lower()) for b in bands]


@dataclass
class LoadReport:
    """What an import did with every tensor."""

    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)  # key -> the rule applied
    missing: list[str] = field(default_factory=list)  # target keys the source does not hold
    unexpected: list[str] = field(default_factory=list)  # source keys no target key uses
    head: str = "none"  # the DINO head: kept, or why not

    def lines(self) -> list[str]:
        """The report as lines for the run log."""
        out = [f"loaded {len(self.loaded)} tensors as they are"]
        out += [f"adapted {k}: {why}" for k, why in sorted(self.adapted.items())]
        out += [f"missing {k}" for k in self.missing] + [f"not used {k}" for k in self.unexpected]
        out.append(f"DINO head: {self.head}")
        return out

    def to_json(self) -> dict[str, Any]:
        """The report as JSON (written next to the run's checkpoints)."""
        return {"loaded": len(self.loaded), "adapted": self.adapted, "missing": self.missing,
                "unexpected": self.unexpected, "head": self.head}


@dataclass(frozen=True)
class Imported:
    """A source model as this project's ViT, and its DINO head's weights when it has one."""

    vit: ViT
    head: dict[str, torch.Tensor] | None
    report: LoadReport


def read_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's top-level object: safetensors, or a torch file read with ``weights_only``.

    Raises:
        BadInputError: missing file. TrainingError: unreadable.
    """
    p = Path(path).expanduser()
    check_regular(p, "weights file")  # a FIFO would block the read for ever
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(p)))
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a crafted pickle, a truncated zip, a wrong file
        raise TrainingError(f"cannot read weights {p}: {first_line(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise TrainingError(f"weights {p} hold a {type(obj).__name__}, not a state dict")
    return obj


def _strip(sd: Mapping[str, Any], prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
        if isinstance(v, torch.Tensor):
            out[k] = v
    return out


def backbone_state(obj: Mapping[str, Any], fmt: Format, which: str = "teacher") -> tuple[dict[str, torch.Tensor],
                                                                                         dict[str, torch.Tensor]]:
    """(backbone tensors in timm's layout, DINO head tensors in this project's layout) of a checkpoint."""
    if fmt == "msc-france":
        sd = obj[which]
        backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        head = {k[len("dino_head."):]: v for k, v in sd.items() if k.startswith("dino_head.")}
        return to_timm(backbone), head
    if fmt in ("dino", "xstars"):
        sd = obj.get(which) or obj.get("model") or obj.get("state_dict") or obj
        flat = _strip(sd, ("module.",))
        backbone = _strip({k: v for k, v in flat.items() if not k.startswith("head.")}, ("backbone.",))
        head_raw = {k[len("head."):]: v for k, v in flat.items() if k.startswith("head.")}
        rename = {"last_layer.weight_g": "last_layer.parametrizations.weight.original0",
                  "last_layer.weight_v": "last_layer.parametrizations.weight.original1"}
        return backbone, {rename.get(k, k): v for k, v in head_raw.items()}
    sd = obj.get("state_dict") or obj.get("model") or obj
    return _strip(sd, ("module.", "backbone.", "model.")), {}


def to_timm(ours: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This project's ViT keys -> timm's (per-sensor embeddings as ``patch_embed.<sensor>.proj.*``)."""
    out = {}
    for k, v in ours.items():
        k2 = k.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.2.", ".mlp.fc2.")
        if k2.startswith("patch_embed."):
            _, sensor, param = k2.split(".")
            k2 = "patch_embed.proj." + param if sensor == ViT.SHARED else f"patch_embed.{sensor}.proj.{param}"
        out[k2] = v
    return out


#: Patch positions a source's position embeddings may hold (an 8,192 px image at patch 16): checked
#: before any conversion, since a zero-stride view declares billions in a few kilobytes of file.
MAX_POSITIONS = 512 * 512


def _bounded(w: torch.Tensor, want: torch.Tensor, key: str, path: str | Path, factor: int = 64) -> None:
    """A source tensor no larger than ``factor`` times what the model holds under ``key`` (checked
    before anything converts it), then floating point and finite.

    Raises:
        TrainingError: naming the tensor.
    """
    if w.numel() > factor * max(want.numel(), 1):
        raise TrainingError(f"{path}: {key} declares {w.numel():,} values, the model holds {want.numel():,}")
    check_weight(w, f"{path}: {key}")


def _resize_pos(pos: torch.Tensor, tokens: int) -> torch.Tensor:
    """Position embeddings (1, 1 + n, d) for ``tokens`` - 1 patches, the class token kept apart."""
    if pos.dim() != 3 or pos.shape[0] != 1 or not 2 <= pos.shape[1] <= MAX_POSITIONS + 1:
        raise TrainingError(f"position embeddings of shape {tuple(pos.shape)}: not (1, 1 + patches, dim) with at "
                            f"most {MAX_POSITIONS} patches")
    n = pos.shape[1] - 1
    side, new = int(round(math.sqrt(n))), int(round(math.sqrt(tokens - 1)))
    if side * side != n or new * new != tokens - 1:
        raise TrainingError(f"position embeddings of {n} patches are not a square grid")
    grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1].float(), grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], dim=1)


def _adapt_embedding(w: torch.Tensor, src_bands: list[str], dst_bands: list[str]) -> tuple[torch.Tensor, str]:
    """Patch-embedding filters (dim, bands, p, p) re-ordered to ``dst_bands`` by name."""
    cols, missing = [], []
    for b in dst_bands:
        if b in src_bands:
            cols.append(w[:, src_bands.index(b)])
        else:
            cols.append(w.mean(dim=1))
            missing.append(b)
    rule = f"bands {', '.join(dst_bands)} taken by name from the source's {len(src_bands)}"
    if missing:
        rule += f"; {', '.join(missing)} (absent from the source) from the mean of its filters"
    return torch.stack(cols, dim=1), rule


def _embedding(k: str, want: torch.Tensor, src: Mapping[str, torch.Tensor], sensors: Mapping[str, Sequence[str]],
               src_names: list[str] | None, path: str | Path, arch: str, patch_size: int, report: LoadReport,
               used: set[str], out: dict[str, torch.Tensor]) -> None:
    """One patch-embedding tensor of the target (``k``): the sensor's own in the source, else the
    source's shared one, loaded as is or re-ordered by band name; recorded in ``report``.

    Raises:
        TrainingError: a shape that cannot be adapted, or bands that are not named.
    """
    parts = k.split(".")
    sensor = ViT.SHARED if parts[1] == "proj" else parts[1]
    param = parts[-1]
    own = f"patch_embed.{sensor}.proj.{param}"
    key = own if own in src else f"patch_embed.proj.{param}"
    if key not in src:
        report.missing.append(k)
        return
    used.add(key)
    w = src[key]
    _bounded(w, want, key, path)
    if param == "bias" or (w.shape == want.shape and (src_names is None or key == own)):
        out[k] = w
        report.loaded.append(k)
        return
    dim = ARCHS[arch]["dim"]
    if w.shape[0] != dim or w.shape[2:] != want.shape[2:]:
        raise TrainingError(f"{path}: {key} is {tuple(w.shape)}; {arch}/{patch_size} needs "
                            f"({dim}, bands, {patch_size}, {patch_size})")
    if src_names is None:
        raise TrainingError(f"{path}: {key} takes {w.shape[1]} bands, sensor '{sensor}' has "
                            f"{want.shape[1]}; name the source's bands (init.bands) to adapt it")
    if len(src_names) != w.shape[1]:
        raise TrainingError(f"{path}: {key} takes {w.shape[1]} bands, init.bands names {len(src_names)}")
    dst = list(sensors[sensor]) if sensor != ViT.SHARED else list(next(iter(sensors.values())))
    out[k], report.adapted[k] = _adapt_embedding(w, src_names, band_names(dst))


def import_vit(path: str | Path, fmt: Format, sensors: Mapping[str, Sequence[str]], arch: str, patch_size: int,
               img_size: int, source_bands: Sequence[str] | str | None = None, patch_embed: str = "per-sensor",
               which: str = "teacher") -> Imported:
    """A ViT for ``sensors`` (name -> the band names it is fed) from a checkpoint of format ``fmt``.

    Args:
        path: the weights (``.pth``/``.pt``/``.ckpt``, or ``.safetensors``).
        fmt: its key layout.
        sensors: the sensors the ViT embeds, each with its band names in input order.
        arch: architecture the weights must be (``vit_small`` for a ViT-S/16).
        patch_size: patch size the weights must have.
        img_size: input size the position embeddings are resized to.
        source_bands: the source's input bands in order (names, Sentinel-2 ids or a preset); for
            this project's checkpoints and per-sensor exports, each sensor's own embedding is used.
        patch_embed: the ViT's embedding scheme.
        which: ``teacher`` or ``student`` of a DINO-style checkpoint.

    Raises:
        TrainingError: a backbone tensor that is neither loaded nor adapted, or shapes that disagree.
    """
    obj = read_state(path)
    if fmt == "msc-france" and "format" not in obj:
        raise TrainingError(f"{path} is not an msc-france checkpoint (no 'format'); try format timm or dino")
    src, head = backbone_state(obj, fmt, which)
    vit = ViT({s: len(b) for s, b in sensors.items()}, arch, patch_size, img_size, drop_path=0.0, patch_embed=patch_embed)
    target, report, used, out = to_timm(vit.state_dict()), LoadReport(), set[str](), dict[str, torch.Tensor]()
    src_names = band_names(source_bands) if source_bands is not None else None
    for k, want in target.items():
        if k.startswith("patch_embed."):
            _embedding(k, want, src, sensors, src_names, path, arch, patch_size, report, used, out)
            continue
        if k not in src:
            report.missing.append(k)
            continue
        used.add(k)
        w = src[k]
        if k == "pos_embed" and w.dim() == 3 and w.shape[1] > MAX_POSITIONS + 1:
            raise TrainingError(f"{path}: pos_embed declares {w.shape[1] - 1} patches, more than {MAX_POSITIONS}")
        _bounded(w, want, k, path, 1 if k != "pos_embed" else MAX_POSITIONS)
        if k == "pos_embed" and w.shape != want.shape:
            if w.shape[-1] != want.shape[-1]:
                raise TrainingError(f"{path}: pos_embed width {w.shape[-1]}, {arch} needs {want.shape[-1]}")
            out[k] = _resize_pos(w, want.shape[1])
            report.adapted[k] = f"{w.shape[1] - 1} patches resized to {want.shape[1] - 1} (bicubic), class token kept"
            continue
        if w.shape != want.shape:
            raise TrainingError(f"{path}: {k} is {tuple(w.shape)}, {arch}/{patch_size} needs {tuple(want.shape)}")
        out[k] = w
        report.loaded.append(k)
    report.unexpected = sorted(k for k in src if k not in used)
    if report.missing:
        shown = ", ".join(report.missing[:5]) + (f" (+{len(report.missing) - 5} more)" if len(report.missing) > 5 else "")
        raise TrainingError(f"{path}: {len(report.missing)} backbone tensor(s) are neither in the weights nor "
                            f"adapted: {shown}; is it a {arch}/{patch_size} in {fmt} layout?")
    vit.load_state_dict(from_timm(out), strict=True)
    report.head = "kept from the source" if head else "the source has none"
    return Imported(vit, head or None, report)


def from_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys in timm's layout (as :func:`to_timm` writes them) -> this project's ViT keys."""
    out = {}
    for k, v in sd.items():
        k2 = k.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.2.")
        if k2.startswith("patch_embed.proj."):
            k2 = f"patch_embed.{ViT.SHARED}.{k2.split('.')[-1]}"
        elif k2.startswith("patch_embed."):
            _, sensor, _, param = k2.split(".")
            k2 = f"patch_embed.{sensor}.{param}"
        out[k2] = v.contiguous()
    return out


def export_encoder(vit: ViT, out: Path, meta: Mapping[str, Any], card: str | None = None) -> list[Path]:
    """Write ``model.safetensors`` (the encoder in timm's key layout, one ``patch_embed.<sensor>``
    per sensor), ``config.json`` (architecture, sensors and their bands, normalisation, and
    ``meta``) and, given ``card``, the model card ``README.md`` into ``out``.
    """
    from safetensors.torch import save_file

    from msc_france.fsutil import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in to_timm(vit.state_dict()).items()}
    weights, config = out / "model.safetensors", out / "config.json"
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "msc-france-encoder", "layout": "timm"})
    a = ARCHS[vit.arch]
    cfg = {"architecture": vit.arch, "embed_dim": vit.dim, "depth": a["depth"], "num_heads": a["heads"],
           "patch_size": vit.patch_size, "img_size": vit.img_size, "mlp_ratio": 4.0, "layer_norm_eps": 1e-6,
           "class_token": True,
           "global_pool": "token", "patch_embed": vit.embed_mode, **meta}
    with atomic_path(config) as tmp:
        tmp.write_text(json.dumps(cfg, indent=1))
    paths = [weights, config]
    if card is not None:
        with atomic_path(out / "README.md") as tmp:
            tmp.write_text(card)
        paths.append(out / "README.md")
    return paths


__all__ = ["BAND_PRESETS", "Imported", "LoadReport", "band_names", "export_encoder", "from_timm", "import_vit",
           "read_state", "to_timm"]
