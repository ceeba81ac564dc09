"""``msc-france eval``: frozen-encoder evaluations of several models, with baselines, into one report.

On the store's held-out chips (cut into co-located tiles, see :mod:`msc_france.eval.features`):

* cross-sensor retrieval: each tile's embedding in sensor A retrieves its co-located tile in
  sensor B among all held-out tiles (R@1, R@5, median rank), for every ordered sensor pair;
* land-cover classification of tiles (dominant label class): weighted kNN and a linear probe per
  sensor, trained on the training chips' tiles;
* cross-sensor transfer: a linear probe trained on sensor A's features, tested on sensor B's;
* patch-level linear segmentation of the label raster (mIoU and per-class IoU);
* external datasets (EuroSAT, UC Merced, RESISC45, GeoTIFF segmentation) when configured.

Baselines: a randomly initialised encoder of the same architecture, plus every configured model
(DINO-only, X-STARS, continual) whose checkpoint exists.
"""

from __future__ import annotations

import json
import time
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
from msc_france.eval.external import load_classification, load_segmentation, label_fraction
from msc_france.eval.features import Features, dominant, extract, patch_labels
from msc_france.store import Store
from msc_france.xstars.train import build_backbone, load_checkpoint
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
    test_splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["val", "test"])
    models: list[ModelEntry] = Field(default_factory=list)
    random_baseline: bool = True
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
    classes = store.root["labels"].attrs.get("classes")
    kw = dict(sensors=cfg.sensors, bands=cfg.bands, size=size, labels=True, cache=False)
    train = MSCFranceDataset(cfg.store, split=cfg.train_split, **kw)
    held: MSCFranceDataset | None = None
    for s in cfg.test_splits:
        d = MSCFranceDataset(cfg.store, split=s, **kw)
        if held is None:
            held = d
        else:
            held.chip_ids += d.chip_ids
            held.chip_index += d.chip_index
    assert held is not None
    if len(train) == 0 or len(held) == 0:
        raise BadInputError(f"store {cfg.store}: {len(train)} train and {len(held)} held-out chips; need both")
    codes: set[int] = set()
    for ds in (train, held):
        for i in range(len(ds)):
            codes |= set(int(c) for c in np.unique(ds.read(i, [])["labels"].numpy()) if c != 0)
    class_index = {c: i for i, c in enumerate(sorted(codes))}
    names = {i: (classes or {}).get(str(c), str(c)) for c, i in class_index.items()}
    return train, held, class_index, names


def _models(cfg: EvalConfig) -> list[tuple[str, ViT, dict[str, Any]]]:
    out = []
    arch = None
    for m in cfg.models:
        if not Path(m.checkpoint).exists():
            if m.optional:
                continue
            raise BadInputError(f"checkpoint not found: {m.checkpoint} (run make pretrain first)")
        ckpt = load_checkpoint(m.checkpoint)
        vit = build_backbone(ckpt)
        arch = arch or ckpt["model"]
        out.append((m.name, vit, ckpt["model"]))
    if cfg.random_baseline:
        a = arch or {"arch": "vit_tiny", "patch_size": 16, "img_size": cfg.input_size}
        torch.manual_seed(cfg.seed)
        vit = ViT({s: len(cfg.bands) for s in cfg.sensors}, a["arch"], a["patch_size"], a["img_size"], drop_path=0.0)
        out.insert(0, ("random", vit, dict(a)))
    if not out:
        raise BadInputError("no model to evaluate (no checkpoint found and random_baseline is off)")
    return out


def _classification(tr: Features, te: Features, ytr: torch.Tensor, yte: torch.Tensor, n_classes: int,
                    sensors: list[str], k: int) -> tuple[dict[str, Any], dict[str, Any]]:
    cls_out, transfer = {}, {}
    mtr, mte = ytr >= 0, yte >= 0
    probes = {}
    for s in sensors:
        ftr, fte = tr.cls[s][mtr], te.cls[s][mte]
        knn = M.knn_predict(ftr, ytr[mtr], fte, n_classes, k=k)
        probe = M.linear_probe(ftr, ytr[mtr], n_classes)
        probes[s] = probe
        with torch.no_grad():
            lin = probe(fte).argmax(1)
        cls_out[s] = {"knn_acc": M.accuracy(knn, yte[mte]), "linear_acc": M.accuracy(lin, yte[mte]),
                      "n_train": int(mtr.sum()), "n_test": int(mte.sum())}
    for a in sensors:
        for b in sensors:
            with torch.no_grad():
                pred = probes[a](te.cls[b][mte]).argmax(1)
            transfer[f"{a}->{b}"] = M.accuracy(pred, yte[mte])
    return cls_out, transfer


def _segmentation(tr: Features, te: Features, patch: int, n_classes: int, sensors: list[str],
                  names: dict[int, str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    assert tr.labels is not None and te.labels is not None
    ptr = patch_labels(tr.labels, patch)  # test tiles are scored per pixel, against te.labels
    out, preds = {}, {}
    size = te.labels.shape[-1]
    side = size // patch
    for s in sensors:
        xtr = tr.patches[s].reshape(-1, tr.patches[s].shape[-1])
        ytr = ptr.reshape(-1)
        keep = ytr >= 0
        g = torch.Generator().manual_seed(0)
        sel = torch.nonzero(keep).flatten()
        sel = sel[torch.randperm(len(sel), generator=g)[:20000]]  # bounded probe cost
        probe = M.linear_probe(xtr[sel], ytr[sel], n_classes, steps=200)
        with torch.no_grad():
            logits = probe(te.patches[s].reshape(-1, te.patches[s].shape[-1]))
        logits = logits.reshape(-1, side, side, n_classes).permute(0, 3, 1, 2)
        up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False).argmax(1)
        cm = M.confusion(up.flatten(), te.labels.flatten(), n_classes)
        ious, miou = M.iou_from_confusion(cm)
        out[s] = {"mIoU": miou, "per_class": {names[i]: v for i, v in enumerate(ious)},
                  "pixel_acc": float(cm.diagonal().sum() / cm.sum().clamp_min(1))}
        preds[s] = up
    return out, preds


def _external(cfg: EvalConfig, vit: ViT, device: torch.device, bands: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for e in cfg.external:
        if e.sensor not in vit.patch_embed:
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
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
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
    for name, vit, meta in models:
        sensors = [s for s in cfg.sensors if s in vit.patch_embed]
        tr = extract(vit, _subset(train_ds, sensors), cfg.tiles, cfg.input_size, class_index, device)
        te = extract(vit, _subset(held_ds, sensors), cfg.tiles, cfg.input_size, class_index, device)
        held_feats = te
        assert tr.labels is not None and te.labels is not None
        ytr, yte = dominant(tr.labels, n_classes), dominant(te.labels, n_classes)
        entry: dict[str, Any] = {"arch": meta.get("arch"), "sensors": sensors, "retrieval": {}}
        for a in sensors:
            for b in sensors:
                if a == b:
                    continue
                ranks = M.retrieval_ranks(te.cls[a], te.cls[b])
                entry["retrieval"][f"{a}->{b}"] = M.retrieval_metrics(ranks)
                figures["ranks"].setdefault(f"{a}->{b}", {})[name] = ranks
        entry["classification"], entry["transfer"] = _classification(tr, te, ytr, yte, n_classes, sensors, cfg.knn_k)
        entry["segmentation"], preds = _segmentation(tr, te, vit.patch_size, n_classes, sensors, names)
        figures["seg"][name] = preds
        if cfg.external:
            entry["external"] = _external(cfg, vit.to(device), device, cfg.bands)
        report["models"][name] = entry
    report["n_tiles"] = {"train": len(train_ds) * cfg.tiles**2, "held_out": len(held_ds) * cfg.tiles**2}
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    from msc_france.eval.report import figures as draw, markdown

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
