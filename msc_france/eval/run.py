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

Each held-out split is scored on its own (``test_splits``, by default ``val`` then ``test``):
every choice is made on ``val``; ``test`` is read for the report. Cross-sensor retrieval is also
scored against a gallery that layout cannot solve (quarter-tile shifted, rotated or flipped tiles,
:func:`~msc_france.eval.probes.shifted_retrieval`).

Every table has the baselines in it (:mod:`msc_france.eval.baselines`): learning-free features
(pooled pixels, z-scored thumbnails, a colour histogram), random ViTs with a shared and with
per-sensor patch embeddings, and the models marked ``baseline`` (DINO only, with and without a
ridge alignment fitted on co-located training tiles; a global InfoNCE model; the reference MSAD).
The report states, for every headline number, the best baseline and whether each model beats it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from msc_france.config import StrictModel, load_config_mapping, parse_model
from msc_france.data import ChipSelection, DatasetView, MSCFranceDataset
from msc_france.errors import BadInputError
from msc_france.eval import metrics as M
from msc_france.eval.baselines import FIXED, NAMES, ridge_aligned
from msc_france.eval.bootstrap import BlockStats, draws, interval
from msc_france.eval.external import (
    label_fraction,
    load_classification,
    load_segmentation,
)
from msc_france.eval.features import (
    Encoder,
    Features,
    dominant,
    extract,
    patch_labels,
)
from msc_france.eval.probes import (
    KINDS,
    classification,
    fraction_probe,
    label_budget,
    majority_baseline,
    pair_retrieval,
    retrieval,
    segmentation,
    shifted_retrieval,
)
from msc_france.eval.rivals import ConvEncoder, train_supervised, training_tiles
from msc_france.eval.tiles import chip_blocks, headline_stats, shifted_ranks
from msc_france.store import Store
from msc_france.store.chip_index import ChipIndex
from msc_france.xstars.checkpoint import Checkpoint, build_backbone, load_checkpoint
from msc_france.xstars.distributed import resolve_device
from msc_france.xstars.inputs import ModelInputs, ModelSpec, from_stats
from msc_france.xstars.msad import MSADHeads
from msc_france.xstars.vit import ViT


class ModelEntry(StrictModel):
    """A model to evaluate."""

    name: str
    checkpoint: str
    optional: bool = False
    baseline: bool = Field(False, description="a baseline to beat (e.g. DINO only), not a model to judge")
    ridge: bool = Field(False, description="also score it with a ridge alignment onto the first sensor, fitted on "
                        "co-located training tiles (row '<name>+ridge')")
    group: str | None = Field(None, description="runs of one configuration (e.g. seeds): aggregated with a 95 % "
                              "interval")


class ExternalEntry(StrictModel):
    """An external dataset to evaluate on."""

    kind: Literal["eurosat-rgb", "eurosat-ms", "ucmerced", "resisc45", "geotiff-segmentation"]
    root: str
    sensor: str = Field(description="whose patch embedding reads it (e.g. sentinel-2-l2a for EuroSAT)")
    size: int = 64
    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0])


class LabelBudget(StrictModel):
    """One sensor's own tasks probed with a fraction of the training labels (whole chips)."""

    sensor: str = "aerial"
    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 1.0])

    @field_validator("fractions")
    @classmethod
    def _in_range(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"label fractions must lie in (0, 1], got {v}")
        return v


class EvalConfig(StrictModel):
    """``pipelines/eval.yaml``."""

    name: str = "eval"
    store: str = "data/demo.zarr"
    sensors: list[str] = Field(default_factory=lambda: ["sentinel-2-l2a", "landsat-8-c2-l2", "aerial"])
    bands: list[str] | None = Field(None, description="bands the baselines read (default: the first model's, "
                                    "else red, green, blue); each model reads the bands it was trained on")
    input_size: int = 64
    tiles: int = Field(4, ge=1, description="tiles per chip side")
    train_split: Literal["train", "val", "test"] = "train"
    test_splits: list[Literal["train", "val", "test"]] = Field(
        ["val", "test"], description="held-out splits, each scored on its own")
    models: list[ModelEntry] = Field(default_factory=list)
    baselines: list[str] = Field(default_factory=lambda: list(NAMES),
                                 description="learning-free and random baselines to score (see NAMES)")
    shifted_gallery: bool = Field(True, description="also score retrieval against shifted, rotated tiles")
    gallery_diagnostics: bool = Field(False, description="also score the shift alone and the turn alone (entries "
                                      "retrieval_shift_only and retrieval_turn_only): which of the two defeats a model")
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
    ridge_baselines: list[str] = Field(
        default_factory=lambda: ["random-conv"], description="baselines also scored after a ridge map onto the first "
        "sensor fitted on co-located training tiles (rows '<baseline>+ridge')")
    supervised: list[str] = Field(
        default_factory=lambda: ["sentinel-2-l2a"], description="sensors a supervised rival is trained on (its "
        "training tiles and labels only; row group 'supervised-<sensor>'), then applied to every sensor")
    supervised_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    supervised_steps: int = Field(200, ge=1)
    label_budget: LabelBudget | None = Field(
        None, description="also probe one sensor's own tasks with a fraction of the training labels (the "
        "continual claim: a model adapted to a new sensor, judged on that sensor with little data)")
    bootstrap_draws: int = Field(1000, ge=100, description="block bootstrap draws of the held-out chips "
                                 "(msc_france.eval.bootstrap)")
    random_seeds: list[int] = Field(
        [0], min_length=1, description="initialisations of the random ViT baselines: the first keeps the "
        "baseline's name, the others are rows '<baseline>-seed<k>' of the same group (mean and 95 % interval)")

    @field_validator("baselines")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [b for b in v if b not in NAMES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; known: {', '.join(NAMES)}")
        return v

    @field_validator("random_seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"random_seeds repeats a seed: {v}")
        return v


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


def _datasets(cfg: EvalConfig, size: int) -> tuple[MSCFranceDataset, dict[str, MSCFranceDataset], dict[int, int],
                                                   dict[int, str]]:
    """The training chips, each held-out split's chips (as stored: every model reads them its own
    way, :func:`_view`), and the classes that occur in them.
    """
    store = Store.open(cfg.store)
    labels = "labels" in {L.group for L in store.layers}
    if not labels:
        raise BadInputError(f"store {cfg.store} has no labels group; build it with a label source")
    view = DatasetView(tuple(cfg.sensors), size=size, labels=True, normalize=False)

    def dataset(split: str) -> MSCFranceDataset:
        return MSCFranceDataset(cfg.store, ChipSelection.of(split), view)

    train = dataset(cfg.train_split)
    held: dict[str, MSCFranceDataset] = {h: dataset(h) for h in dict.fromkeys(cfg.test_splits)}
    empty = [h for h, d in held.items() if len(d) == 0]
    if len(train) == 0 or empty:
        raise BadInputError(f"store {cfg.store}: {len(train)} {cfg.train_split} chips, no chips in "
                            f"{', '.join(empty) or '-'}; need chips in every split evaluated")
    present: set[int] = set()  # the store's class indices that occur: the probes' classes
    for ds in (train, *held.values()):
        for i in range(len(ds)):
            present |= set(int(c) for c in np.unique(ds.read(i, [])["mask"].numpy()) if c >= 0)
    class_index = {c: i for i, c in enumerate(sorted(present))}
    names = {i: train.class_names.get(c, str(c)) for c, i in class_index.items()}
    return train, held, class_index, names


@dataclass
class Model:
    """An encoder to evaluate, what it eats, and what its checkpoint offers beyond the backbone."""

    name: str
    encoder: Encoder
    meta: dict[str, Any]
    inputs: ModelInputs
    ckpt: Checkpoint | None = None
    baseline: bool = False
    ridge: bool = False
    group: str | None = None


def _view(ds: MSCFranceDataset, m: Model, sensors: list[str]) -> MSCFranceDataset:
    """``ds``'s chips as model ``m`` eats them: its sensors, bands and normalisation statistics."""
    return ds.with_view(sensors=sensors, normalize=m.inputs)


def _checkpoints(cfg: EvalConfig, store: Store) -> list[Model]:
    """The configured checkpoints (optional ones that are missing left out), each checked against
    the store: a sensor or band it eats that the store lacks is refused in one line.
    """
    out = []
    for m in cfg.models:
        if not Path(m.checkpoint).exists():
            if m.optional:
                continue
            raise BadInputError(f"checkpoint not found: {m.checkpoint} (run make pretrain first)")
        ckpt = load_checkpoint(m.checkpoint)
        ckpt.inputs.check_store(store, cfg.sensors, f"model {m.name}")
        out.append(Model(m.name, build_backbone(ckpt, cfg.features), ckpt.model.to_json(), ckpt.inputs, ckpt,
                         m.baseline, m.ridge, m.group))
    return out


def baseline_bands(cfg: EvalConfig, models: Sequence[Model]) -> dict[str, list[str]]:
    """Per sensor, the bands baselines read: ``bands`` of the config, else the first model's that
    reads the sensor, else red, green, blue.
    """
    out = {}
    for s in cfg.sensors:
        eats = next((list(m.inputs.sensors[s].bands) for m in models if s in m.inputs.sensors), None)
        out[s] = list(cfg.bands) if cfg.bands else eats or ["red", "green", "blue"]
    return out


def _supervised(cfg: EvalConfig, train: MSCFranceDataset, class_index: dict[int, int],
                own: ModelInputs) -> list[Model]:
    """The supervised rivals: one net per configured sensor and seed, trained on that sensor's
    training tiles and labels (:func:`~msc_france.eval.rivals.train_supervised`).
    """
    out = []
    for s in cfg.supervised:
        if s not in cfg.sensors:
            raise BadInputError(f"supervised rival on '{s}', which is not among the evaluated sensors")
        ds = train.with_view(sensors=[s], normalize=own)
        images, labels = training_tiles(ds, s, cfg.tiles, class_index)
        for seed in cfg.supervised_seeds:
            net = train_supervised(images, labels, len(class_index), seed, cfg.supervised_steps)
            name = f"supervised-{s}" + (f"-seed{seed}" if seed != cfg.supervised_seeds[0] else "")
            out.append(Model(name, net, {"arch": "conv", "trained_on": s, "seed": seed}, own, baseline=True,
                             group=f"supervised-{s}" if len(cfg.supervised_seeds) > 1 else None))
    return out


def _random(cfg: EvalConfig, b: str, own: ModelInputs) -> list[Model]:
    """A random baseline (ViT or conv net), once per initialisation in ``random_seeds``: one group."""
    out = []
    spec = own.model
    for i, seed in enumerate(cfg.random_seeds):
        name = b if i == 0 else f"{b}-seed{seed}"
        group = b if len(cfg.random_seeds) > 1 else None
        if b == "random-conv":
            enc: Encoder = ConvEncoder(len(next(iter(own.sensors.values())).bands), seed)
            meta: dict[str, Any] = {"arch": "conv", "seed": seed}
        else:
            # The models' architecture, untrained; a shared embedding alone makes a random ViT
            # retrieve well when sensors look alike.
            embed = "shared" if b == "random-shared" else "per-sensor"
            torch.manual_seed(seed)
            enc = ViT(own.channels, spec.arch, spec.patch_size, spec.img_size, drop_path=0.0, patch_embed=embed)
            meta = {**spec.to_json(), "patch_embed": embed, "seed": seed}
        out.append(Model(name, enc, meta, own, baseline=True, ridge=b in cfg.ridge_baselines, group=group))
    return out


def _models(cfg: EvalConfig) -> list[Model]:
    out = _checkpoints(cfg, Store.open(cfg.store))
    own = _own_inputs(cfg, out)  # baselines read the store as it is: its own statistics
    fixed = [Model(b, FIXED[b](), {"arch": b}, own, baseline=True, ridge=b in cfg.ridge_baselines)
             for b in cfg.baselines if b in FIXED]
    for b in cfg.baselines:
        if b not in FIXED:
            fixed += _random(cfg, b, own)
    out = fixed + out
    if not out:
        raise BadInputError("no model to evaluate (no checkpoint found and no baseline configured)")
    return out


def _msad_heads(ckpt: Checkpoint) -> MSADHeads | None:
    """The student's MSAD projection heads of a checkpoint (None when it trained without MSAD)."""
    c = ckpt.config.msad
    keys = {k[len("msad_heads."):]: v for k, v in ckpt.student.items() if k.startswith("msad_heads.")}
    if not keys or c.alpha == 0:
        return None
    dim = ckpt.student["backbone.pos_embed"].shape[-1]
    heads = MSADHeads(dim, list(ckpt.sensors), c.proj_dim, c.dropout, layout=c.heads, normalize=c.normalize)
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
    te = extract(student, _view(held, m, sensors), cfg.tiles, cfg.input_size, class_index, device)
    if heads is not None:
        proj = {s: F.normalize(heads(torch.cat([te.cls[s][:, None], te.patches[s]], 1), s)[:, 1:], dim=-1)
                for s in sensors if not heads.has_per_sensor or s in heads.per_sensor}
        flat = {s: (p.flatten(1) / p.shape[1] ** 0.5) for s, p in proj.items()}
        out["msad_projection"] = {f"{a}->{b}": pair_retrieval(flat[a], flat[b]) for a in flat for b in flat if a != b}
    cont = m.ckpt.config.continual
    if cont is not None and m.ckpt.frozen is not None:
        frozen = build_backbone(m.ckpt, frozen=True)
        src, tgt = cont.source_sensor, cont.target_sensor
        fz = extract(frozen, _view(held, m, [src]), cfg.tiles, cfg.input_size, class_index, device)
        own = extract(build_backbone(m.ckpt, cfg.features), _view(held, m, [tgt]), cfg.tiles, cfg.input_size,
                      class_index, device)
        out["continual"] = {"pair": f"{tgt}(student)->{src}(frozen)", **{
            k: pair_retrieval(own.kind(k, tgt), fz.kind(k, src)) for k in KINDS}}
    return out


def _external(cfg: EvalConfig, vit: ViT, device: torch.device, inputs: ModelInputs) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for e in cfg.external:
        if not vit.has_sensor(e.sensor) or e.sensor not in inputs.sensors:
            res[e.kind] = {"skipped": f"model has no {e.sensor} patch embedding"}
            continue
        if e.kind == "geotiff-segmentation":
            data = load_segmentation(e.root, e.size)
        else:
            data = load_classification(e.kind, e.root, e.size, list(inputs.sensors[e.sensor].bands))
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


@dataclass
class _Scored:
    """One row of the report: an encoder's (or an aligned encoder's) features on every split."""

    name: str
    train: Features
    held: dict[str, Features]
    gallery: dict[tuple[str, str], Features]  # (gallery kind, split): see _GALLERIES
    model: Model
    probes: dict[Any, Any] = field(default_factory=dict)  # fitted on the training tiles, reused by every split


#: Report entry -> (shift by a quarter tile, turn by a random symmetry of the square) of its gallery.
_GALLERIES = {"retrieval_shifted": (True, True), "retrieval_shift_only": (True, False),
              "retrieval_turn_only": (False, True)}


def _rows(m: Model, cfg: EvalConfig, train_ds: MSCFranceDataset, held_ds: dict[str, MSCFranceDataset],
          class_index: dict[int, int], device: torch.device) -> list[_Scored]:
    """Features of one model on every split (and its ridge-aligned row when asked for)."""
    sensors = [s for s in cfg.sensors if m.encoder.has_sensor(s)]
    train_ds, held_ds = _view(train_ds, m, sensors), {h: _view(d, m, sensors) for h, d in held_ds.items()}
    tr = extract(m.encoder, train_ds, cfg.tiles, cfg.input_size, class_index, device)
    held = {h: extract(m.encoder, d, cfg.tiles, cfg.input_size, class_index, device) for h, d in held_ds.items()}
    kinds = [k for k in _GALLERIES if cfg.shifted_gallery and cfg.tiles > 1
             and (k == "retrieval_shifted" or cfg.gallery_diagnostics)]
    gallery = {(k, h): extract(m.encoder, d, cfg.tiles, cfg.input_size, class_index, device,
                               shift=_GALLERIES[k][0], turn=_GALLERIES[k][1], seed=cfg.seed)
               for k in kinds for h, d in held_ds.items()}
    rows = [_Scored(m.name, tr, held, gallery, m)]
    if m.ridge and len(sensors) > 1:  # every split mapped by the maps fitted on the training tiles
        tr_mapped, *rest = ridge_aligned(tr, [*held.values(), *gallery.values()], sensors[0], cfg.ridge_lambda)
        rows.append(_Scored(f"{m.name}+ridge", tr_mapped, dict(zip(held, rest[: len(held)], strict=True)),
                            dict(zip(gallery, rest[len(held):], strict=True)), m))
    return rows


def _score(row: _Scored, split: str, cfg: EvalConfig, n_classes: int, names: dict[int, str],
           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """Every probe of one row on one held-out split: (report entry, retrieval ranks, segmentation)."""
    tr, te = row.train, row.held[split]
    sensors = tr.sensors
    assert tr.labels is not None and te.labels is not None
    ytr, yte = dominant(tr.labels, n_classes), dominant(te.labels, n_classes)
    m = row.model
    entry: dict[str, Any] = {"arch": m.meta.get("arch"), "patch_embed": m.meta.get("patch_embed"),
                             "features": cfg.features if m.ckpt else None, "sensors": sensors}
    entry["retrieval"], ranks = retrieval(tr, te, sensors, cfg.center)
    for (kind, h), gal in row.gallery.items():
        if h == split:
            entry[kind] = shifted_retrieval(te, gal, sensors, cfg.tiles, shifted=_GALLERIES[kind][0])
    entry["classification"], entry["transfer"] = classification(
        tr, te, ytr, yte, n_classes, sensors, cfg.knn_k, cfg.probe_features, row.probes)
    entry["fractions_r2"] = fraction_probe(tr, te, n_classes, sensors, cfg.probe_features, cfg.ridge_lambda,
                                           row.probes)
    entry["segmentation"], preds = segmentation(tr, te, m.encoder.patch_size, n_classes, sensors, names, row.probes)
    lb = cfg.label_budget
    if lb is not None and lb.sensor in sensors:
        entry["label_budget"] = label_budget(tr, te, lb.sensor, lb.fractions, n_classes, cfg.probe_features,
                                             cfg.ridge_lambda, m.encoder.patch_size, cfg.seed)
    return entry, ranks, preds


def _own_inputs(cfg: EvalConfig, models: Sequence[Model]) -> ModelInputs:
    """How baselines and rivals read the store: its own statistics, the models' bands."""
    spec = next((m.inputs.model for m in models if m.ckpt is not None), ModelSpec("vit_tiny", 16, cfg.input_size))
    return from_stats(Store.open(cfg.store), cfg.sensors, baseline_bands(cfg, models), cfg.input_size, spec)


def _report_head(cfg: EvalConfig, train_ds: MSCFranceDataset, held_ds: dict[str, MSCFranceDataset],
                 class_index: dict[int, int], names: dict[int, str]) -> dict[str, Any]:
    """The report before any row: config, classes, counts, and every chance level from its counts."""
    k = cfg.tiles
    chance: dict[str, dict[str, Any]] = {}
    for h, d in held_ds.items():
        tiles, shifted = len(d) * k * k, len(d) * (k - 1) ** 2
        chance[h] = {"R@1": 1.0 / tiles, "queries": tiles, "gallery": tiles,
                     **({"R@1 shifted": 1.0 / shifted, "shifted_queries": shifted, "shifted_gallery": shifted}
                        if k > 1 and cfg.shifted_gallery else {})}
    store = Store.open(cfg.store)
    idx, code_index = store.index(), store.classes().index  # class code -> the store's class index
    fr = ChipIndex(idx).class_fractions()  # columns: class codes
    probe = {c: names[class_index[code_index[int(c)]]] for c in fr.columns
             if code_index.get(int(c)) in class_index}
    for h, d in held_ds.items():  # the probes' classes that a held-out split never shows
        seen = fr[idx["chip_id"].isin(d.chip_ids).to_numpy()]
        chance[h]["classes_absent"] = sorted(n for c, n in probe.items() if not (seen[c] > 0).any())
    return {
        "config": cfg.model_dump(mode="json"), "classes": {names[i]: c for c, i in class_index.items()},
        "n_chips": {"train": len(train_ds), **{h: len(d) for h, d in held_ds.items()}},
        "n_tiles": {"train": len(train_ds) * k**2, **{h: len(d) * k**2 for h, d in held_ds.items()}},
        "roles": {}, "groups": {}, "external": {},
        "splits": {h: {"models": {}, "chance": chance[h], "chance_R@1": chance[h]["R@1"]} for h in held_ds},
        "class_colors": {str(c): v for c, v in store.facts("labels").class_colors.items()},
    }


@dataclass
class _Run:
    """What scoring every row gathers beside the report: figures and per-block statistics."""

    figures: dict[str, Any]
    stats: dict[str, dict[str, dict[str, BlockStats]]]  # split -> row -> headline -> statistics
    shown: str
    shown_feats: Features | None = None


def _score_model(m: Model, cfg: EvalConfig, data: tuple[MSCFranceDataset, dict[str, MSCFranceDataset]],
                 class_index: dict[int, int], names: dict[int, str], report: dict[str, Any], run: _Run,
                 blocks: dict[str, np.ndarray], device: torch.device) -> None:
    """Every row of one model on every held-out split, into ``report`` and ``run``."""
    n_classes = len(class_index)
    for row in _rows(m, cfg, data[0], data[1], class_index, device):
        report["roles"][row.name] = "baseline" if m.baseline else "model"
        report["groups"][row.name] = (m.group + row.name[len(m.name):]) if m.group else row.name
        for h, split_report in report["splits"].items():
            entry, ranks, preds = _score(row, h, cfg, n_classes, names)
            ltr, lte = row.train.labels, row.held[h].labels
            if "majority" not in split_report and ltr is not None and lte is not None:
                split_report["majority"] = majority_baseline(dominant(ltr, n_classes), dominant(lte, n_classes),
                                                             n_classes)
            if m.ckpt is not None and row.name == m.name:
                entry["diagnostics"] = _diagnostics(m, data[1][h], cfg, class_index, device)
            split_report["models"][row.name] = entry
            gal = row.gallery.get(("retrieval_shifted", h))
            shifted = shifted_ranks(row.held[h], gal, row.held[h].sensors, cfg.tiles) if gal is not None else None
            run.stats[h][row.name] = headline_stats(row.held[h], row.probes, ranks, shifted, cfg.probe_features,
                                                    n_classes, m.encoder.patch_size, blocks[h], cfg.tiles)
            if h == run.shown:
                for p, r in ranks["mean"].items():
                    run.figures["ranks"].setdefault(p, {})[row.name] = r
                run.figures["seg"][row.name] = preds
                run.shown_feats = row.held[h]


def _intervals(cfg: EvalConfig, report: dict[str, Any], run: _Run, blocks: dict[str, np.ndarray]) -> None:
    """Per split and row group, each headline number with its interval: held-out blocks and the
    group's runs resampled together (:mod:`msc_france.eval.bootstrap`), the same block draws for
    every group.
    """
    for h, per_row in run.stats.items():
        counts = draws(int(blocks[h].max()) + 1, cfg.bootstrap_draws, cfg.seed)
        groups: dict[str, list[str]] = {}
        for r in per_row:
            groups.setdefault(report["groups"][r], []).append(r)
        out: dict[str, Any] = {}
        for g, rows in groups.items():
            out[g] = {}
            for metric in per_row[rows[0]]:
                iv = interval([per_row[r][metric] for r in rows], counts, seed=cfg.seed + 1)
                out[g][metric] = {"value": iv.value, "low": iv.low, "high": iv.high, "runs": iv.runs}
        report["splits"][h]["intervals"] = out
        report["splits"][h]["blocks"] = int(blocks[h].max()) + 1


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every evaluation for every model (and every baseline and rival) on every held-out split,
    with block-bootstrap intervals; write report.json, report.md and figures (of the last split,
    ``test`` by default).
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    models = _models(cfg)  # a missing or foreign checkpoint is refused before any chip is read
    train_ds, held_ds, class_index, names = _datasets(cfg, cfg.input_size * cfg.tiles)
    models += _supervised(cfg, train_ds, class_index, _own_inputs(cfg, models))
    report = _report_head(cfg, train_ds, held_ds, class_index, names)
    block_chips = int(Store.open(cfg.store).meta.recipe.get("split", {}).get("block_chips", 1))
    blocks = {h: chip_blocks(d.chip_ids, block_chips) for h, d in held_ds.items()}
    run = _Run({"seg": {}, "ranks": {}}, {h: {} for h in held_ds}, list(held_ds)[-1])
    for m in models:
        _score_model(m, cfg, (train_ds, held_ds), class_index, names, report, run, blocks, device)
        if cfg.external and isinstance(m.encoder, ViT):
            report["external"][m.name] = _external(cfg, m.encoder.to(device), device, m.inputs)
    _intervals(cfg, report, run, blocks)
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    from msc_france.eval.report import figures as draw
    from msc_france.eval.report import markdown, split_view

    (out / "report.md").write_text(markdown(report))
    assert run.shown_feats is not None
    draw(split_view(report, run.shown), run.figures, run.shown_feats, names, out)
    return report
