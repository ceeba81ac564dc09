"""``msc-france eval``: frozen-encoder evaluations of several models, with baselines, into one report.

On the store's held-out chips (cut into co-located tiles, see :mod:`msc_france.eval.features`):

* cross-sensor retrieval: each tile's embedding in sensor A retrieves its co-located tile in
  sensor B among all held-out tiles (R@1, R@5, median rank; chance R@1 = 1 / tiles), for every
  ordered sensor pair and three feature kinds: CLS token, mean-pooled patch tokens, dense tokens;
  optionally after per-sensor centring;
* MSAD-projection retrieval (a training diagnostic: what the projection heads align), and, for a
  continual model, retrieval between the adapted student and the frozen source model;
* land-cover classification of tiles (dominant class): kNN and a linear probe per sensor, with
  accuracy, balanced accuracy and macro-F1 next to the majority-class baseline; cross-sensor
  transfer of the probe;
* a class-fraction probe: ridge regression from tile features to the tile's label fractions,
  held-out R2 for same-sensor and cross-sensor pairs;
* patch-level linear segmentation of the label raster (mIoU and per-class IoU);
* external datasets (EuroSAT, UC Merced, RESISC45, GeoTIFF segmentation) when configured.

Baselines bound the metrics from both sides: raw pooled pixels, and a randomly initialised
encoder of the same architecture and patch-embedding scheme as the models.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from msc_france.config import StrictModel, load_config_mapping, parse_model
from msc_france.data import MSCFranceDataset
from msc_france.errors import BadInputError
from msc_france.eval import metrics as M
from msc_france.eval.external import (
    label_fraction,
    load_classification,
    load_segmentation,
)
from msc_france.eval.features import (
    Features,
    PooledPixels,
    dominant,
    extract,
    patch_labels,
)
from msc_france.eval.probes import (
    KINDS,
    classification,
    fraction_probe,
    majority_baseline,
    pair_retrieval,
    retrieval,
    segmentation,
)
from msc_france.store import Store
from msc_france.xstars.checkpoint import build_backbone, load_checkpoint
from msc_france.xstars.distributed import resolve_device
from msc_france.xstars.msad import MSADHeads
from msc_france.xstars.vit import ViT


class ModelEntry(StrictModel):
    """A model to evaluate."""

    name: str
    checkpoint: str
    optional: bool = False


class ExternalEntry(StrictModel):
    """An external dataset to evaluate on."""

    kind: Literal["eurosat-rgb", "eurosat-ms", "ucmerced", "resisc45", "geotiff-segmentation"]
    root: str
    sensor: str = Field(description="whose patch embedding reads it (e.g. sentinel-2-l2a for EuroSAT)")
    size: int = 64
    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0])


class EvalConfig(StrictModel):
    """``pipelines/eval.yaml``."""

    name: str = "eval"
    store: str = "data/demo.zarr"
    sensors: list[str] = Field(default_factory=lambda: ["sentinel-2-l2a", "landsat-8-c2-l2", "aerial"])
    bands: list[str] = Field(default_factory=lambda: ["red", "green", "blue"])
    input_size: int = 64
    tiles: int = Field(4, ge=1, description="tiles per chip side")
    train_split: Literal["train", "val", "test"] = "train"
    test_splits: list[Literal["train", "val", "test"]] = ["val", "test"]  # pydantic copies mutable defaults
    models: list[ModelEntry] = Field(default_factory=list)
    random_baseline: bool = True
    pixel_baseline: bool = Field(True, description="the raw-pixel baseline (4 x 4 pooled pixels per tile)")
    features: Literal["student", "teacher"] = Field(
        "student", description="which backbone of each checkpoint is evaluated (MSAD trains the student)")
    center: bool = Field(False, description="subtract each sensor's mean feature before retrieval")
    probe_features: Literal["cls", "mean", "dense"] = "mean"
    ridge_lambda: float = Field(1.0, gt=0)
    knn_k: int = 10
    external: list[ExternalEntry] = Field(default_factory=list)
    out: str = "runs/eval"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


def load_eval_config(path: str, store: str | None = None, out: str | None = None,
                     checkpoint: str | None = None) -> EvalConfig:
    """Load ``eval.yaml``; ``checkpoint`` replaces the model list with that one checkpoint."""
    p, data = load_config_mapping(path)
    if store:
        data["store"] = store
    if out:
        data["out"] = out
    if checkpoint:
        data["models"] = [{"name": Path(checkpoint).parent.parent.name or "model", "checkpoint": checkpoint}]
    return parse_model(EvalConfig, data, f"config {p}")


def _datasets(cfg: EvalConfig, size: int) -> tuple[MSCFranceDataset, MSCFranceDataset, dict[int, int], dict[int, str]]:
    store = Store.open(cfg.store)
    labels = "labels" in {L.group for L in store.layers}
    if not labels:
        raise BadInputError(f"store {cfg.store} has no labels group; build it with a label source")
    def dataset(split: str | Sequence[str]) -> MSCFranceDataset:
        return MSCFranceDataset(cfg.store, sensors=cfg.sensors, split=split, bands=cfg.bands, size=size,
                                labels=True, cache=False)

    train = dataset(cfg.train_split)
    held = dataset(cfg.test_splits)
    if len(train) == 0 or len(held) == 0:
        raise BadInputError(f"store {cfg.store}: {len(train)} train and {len(held)} held-out chips; need both")
    present: set[int] = set()  # the store's class indices that occur: the probes' classes
    for ds in (train, held):
        for i in range(len(ds)):
            present |= set(int(c) for c in np.unique(ds.read(i, [])["mask"].numpy()) if c >= 0)
    class_index = {c: i for i, c in enumerate(sorted(present))}
    names = {i: train.class_names.get(c, str(c)) for c, i in class_index.items()}
    return train, held, class_index, names


@dataclass
class Model:
    """An encoder to evaluate, and what its checkpoint offers beyond the backbone."""

    name: str
    encoder: ViT | PooledPixels
    meta: dict[str, Any]
    ckpt: dict[str, Any] | None = None


def _models(cfg: EvalConfig) -> list[Model]:
    out = []
    arch = None
    for m in cfg.models:
        if not Path(m.checkpoint).exists():
            if m.optional:
                continue
            raise BadInputError(f"checkpoint not found: {m.checkpoint} (run make pretrain first)")
        ckpt = load_checkpoint(m.checkpoint)
        out.append(Model(m.name, build_backbone(ckpt, cfg.features), ckpt["model"], ckpt))
        arch = arch or ckpt["model"]
    if cfg.random_baseline:
        # The same architecture and patch-embedding scheme as the models: a shared embedding alone
        # makes a random ViT retrieve well when sensors look alike.
        a = arch or {"arch": "vit_tiny", "patch_size": 16, "img_size": cfg.input_size}
        torch.manual_seed(cfg.seed)
        vit = ViT({s: len(cfg.bands) for s in cfg.sensors}, a["arch"], a["patch_size"], a["img_size"], drop_path=0.0,
                  patch_embed=a.get("patch_embed", "per-sensor"))
        out.insert(0, Model("random", vit, dict(a)))
    if cfg.pixel_baseline:
        out.insert(0, Model("pixels", PooledPixels(), {"arch": "pooled pixels 4x4"}))
    if not out:
        raise BadInputError("no model to evaluate (no checkpoint found and both baselines are off)")
    return out


def _msad_heads(ckpt: dict[str, Any]) -> MSADHeads | None:
    """The student's MSAD projection heads of a checkpoint (None when it trained without MSAD)."""
    c = ckpt["config"]["msad"]
    keys = {k[len("msad_heads."):]: v for k, v in ckpt["student"].items() if k.startswith("msad_heads.")}
    if not keys or float(c.get("alpha", 0)) == 0:
        return None
    dim = ckpt["student"]["backbone.pos_embed"].shape[-1]
    heads = MSADHeads(dim, list(ckpt["sensors"]), c["proj_dim"], c["dropout"], layout=c.get("heads", "shared"),
                      normalize=c.get("normalize", True))
    heads.load_state_dict(keys)
    return heads.eval()


@torch.no_grad()
def _diagnostics(m: Model, held: MSCFranceDataset, cfg: EvalConfig, class_index: dict[int, int],
                 device: torch.device) -> dict[str, Any]:
    """MSAD-projection retrieval, and student-vs-frozen retrieval for a continual model."""
    assert m.ckpt is not None
    out: dict[str, Any] = {}
    heads = _msad_heads(m.ckpt)
    student = build_backbone(m.ckpt, "student")
    sensors = [s for s in cfg.sensors if student.has_sensor(s)]
    te = extract(student, _subset(held, sensors), cfg.tiles, cfg.input_size, class_index, device)
    if heads is not None:
        proj = {s: F.normalize(heads(torch.cat([te.cls[s][:, None], te.patches[s]], 1), s)[:, 1:], dim=-1)
                for s in sensors if not heads.has_per_sensor or s in heads.per_sensor}
        flat = {s: (p.flatten(1) / p.shape[1] ** 0.5) for s, p in proj.items()}
        out["msad_projection"] = {f"{a}->{b}": pair_retrieval(flat[a], flat[b]) for a in flat for b in flat if a != b}
    cont = m.ckpt["config"].get("continual")
    if cont and "frozen" in m.ckpt:
        frozen = ViT(dict(m.ckpt.get("frozen_sensors", m.ckpt["sensors"])), m.meta["arch"], m.meta["patch_size"],
                     m.meta["img_size"], drop_path=0.0, patch_embed=m.meta.get("patch_embed", "per-sensor"))
        frozen.load_state_dict(m.ckpt["frozen"])
        src, tgt = cont["source_sensor"], cont["target_sensor"]
        fz = extract(frozen, _subset(held, [src]), cfg.tiles, cfg.input_size, class_index, device)
        own = extract(build_backbone(m.ckpt, cfg.features), _subset(held, [tgt]), cfg.tiles, cfg.input_size,
                      class_index, device)
        out["continual"] = {"pair": f"{tgt}(student)->{src}(frozen)", **{
            k: pair_retrieval(own.kind(k, tgt), fz.kind(k, src)) for k in KINDS}}
    return out


def _external(cfg: EvalConfig, vit: ViT, device: torch.device, bands: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for e in cfg.external:
        if not vit.has_sensor(e.sensor):
            res[e.kind] = {"skipped": f"model has no {e.sensor} patch embedding"}
            continue
        if e.kind == "geotiff-segmentation":
            data = load_segmentation(e.root, e.size)
        else:
            data = load_classification(e.kind, e.root, e.size, bands)
        with torch.no_grad():
            tok = torch.cat([vit(data.images[i : i + 64].to(device), e.sensor).float().cpu()
                             for i in range(0, len(data.images), 64)])
        n_classes = len(data.classes)
        entry: dict[str, Any] = {}
        test = ~data.train
        for frac in e.fractions:
            sub = label_fraction(data.targets, data.train, frac, cfg.seed)
            if data.task == "classification":
                knn = M.knn_predict(tok[sub, 0], data.targets[sub], tok[test, 0], n_classes, k=cfg.knn_k)
                probe = M.linear_probe(tok[sub, 0], data.targets[sub], n_classes)
                with torch.no_grad():
                    lin = probe(tok[test, 0]).argmax(1)
                entry[str(frac)] = {"knn_acc": M.accuracy(knn, data.targets[test]),
                                    "linear_acc": M.accuracy(lin, data.targets[test]), "n_train": int(sub.sum())}
            else:
                p = vit.patch_size
                yl = patch_labels(data.targets[sub], p).reshape(-1)
                x = tok[sub, 1:].reshape(-1, tok.shape[-1])
                keep = yl >= 0
                probe = M.linear_probe(x[keep], yl[keep], n_classes, steps=200)
                side = e.size // p
                with torch.no_grad():
                    lg = probe(tok[test, 1:].reshape(-1, tok.shape[-1])).reshape(-1, side, side, n_classes)
                up = F.interpolate(lg.permute(0, 3, 1, 2), size=(e.size, e.size), mode="bilinear").argmax(1)
                _, miou = M.iou_from_confusion(M.confusion(up.flatten(), data.targets[test].flatten(), n_classes))
                entry[str(frac)] = {"mIoU": miou, "n_train": int(sub.sum())}
        res[e.kind] = entry
    return res


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every evaluation for every model; write report.json, report.md and figures."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    models = _models(cfg)
    size = cfg.input_size * cfg.tiles
    train_ds, held_ds, class_index, names = _datasets(cfg, size)
    n_classes = len(class_index)
    report: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"), "classes": {names[i]: c for c, i in class_index.items()},
        "n_chips": {"train": len(train_ds), "held_out": len(held_ds)}, "models": {},
    }
    figures: dict[str, Any] = {"seg": {}, "ranks": {}}
    held_feats: Features | None = None
    for m in models:
        sensors = [s for s in cfg.sensors if m.encoder.has_sensor(s)]
        tr = extract(m.encoder, _subset(train_ds, sensors), cfg.tiles, cfg.input_size, class_index, device)
        te = extract(m.encoder, _subset(held_ds, sensors), cfg.tiles, cfg.input_size, class_index, device)
        held_feats = te
        assert tr.labels is not None and te.labels is not None
        ytr, yte = dominant(tr.labels, n_classes), dominant(te.labels, n_classes)
        if "majority" not in report:
            report["majority"] = majority_baseline(ytr, yte, n_classes)
            report["chance_R@1"] = 1.0 / len(te.chip)  # type: ignore[arg-type]
        entry: dict[str, Any] = {"arch": m.meta.get("arch"), "patch_embed": m.meta.get("patch_embed"),
                                 "features": cfg.features if m.ckpt else None, "sensors": sensors}
        entry["retrieval"], ranks = retrieval(tr, te, sensors, cfg.center)
        for p, r in ranks["mean"].items():
            figures["ranks"].setdefault(p, {})[m.name] = r
        entry["classification"], entry["transfer"] = classification(
            tr, te, ytr, yte, n_classes, sensors, cfg.knn_k, cfg.probe_features)
        entry["fractions_r2"] = fraction_probe(tr, te, n_classes, sensors, cfg.probe_features, cfg.ridge_lambda)
        entry["segmentation"], preds = segmentation(tr, te, m.encoder.patch_size, n_classes, sensors, names)
        figures["seg"][m.name] = preds
        if m.ckpt is not None:
            entry["diagnostics"] = _diagnostics(m, held_ds, cfg, class_index, device)
        if cfg.external and isinstance(m.encoder, ViT):
            entry["external"] = _external(cfg, m.encoder.to(device), device, cfg.bands)
        report["models"][m.name] = entry
    report["n_tiles"] = {"train": len(train_ds) * cfg.tiles**2, "held_out": len(held_ds) * cfg.tiles**2}
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    from msc_france.eval.report import figures as draw
    from msc_france.eval.report import markdown

    (out / "report.md").write_text(markdown(report))
    assert held_feats is not None
    draw(report, figures, held_feats, names, out)
    return report


def _subset(ds: MSCFranceDataset, sensors: list[str]) -> MSCFranceDataset:
    if sensors == ds.sensors:
        return ds
    import copy

    d = copy.copy(ds)
    d.sensors = sensors
    return d
