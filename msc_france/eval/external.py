"""Readers of external downstream datasets in their usual on-disk layouts.

* ``eurosat-rgb``, ``ucmerced``, ``resisc45``: one folder per class of RGB images (JPEG, PNG or
  TIFF), e.g. ``EuroSAT_RGB/AnnualCrop/AnnualCrop_1.jpg``, ``UCMerced_LandUse/Images/beach/beach00.tif``,
  ``NWPU-RESISC45/airport/airport_001.jpg``.
* ``eurosat-ms``: one folder per class of 13-band Sentinel-2 GeoTIFFs (B01 B02 B03 B04 B05 B06 B07
  B08 B8A B09 B10 B11 B12); red, green, blue (and nir) are picked by name.
* ``geotiff-segmentation``: ``images/NAME.tif`` with ``masks/NAME.tif`` (class per pixel, 0 = ignore
  unless ``ignore_index`` says otherwise).

Train/test: ``train/`` and ``test/`` sub-folders when present, else a deterministic hash split of
the file names (80/20). Label fractions take a stratified, seeded subset of the training part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from msc_france.errors import BadInputError, first_line
from msc_france.splits import unit_hash

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
EUROSAT_MS_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
NAME_TO_S2 = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}


@dataclass
class ExternalData:
    """Images (N, C, S, S) float, targets (N,) or (N, S, S), and the train/test membership."""

    name: str
    images: torch.Tensor
    targets: torch.Tensor
    train: torch.Tensor  # bool (N,)
    classes: list[str]
    task: str  # "classification" or "segmentation"


def _read(path: Path, bands: list[int] | None = None) -> np.ndarray:
    """An image file as (bands, H, W) float32; unreadable files are a one-line BadInputError."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import rasterio

            with rasterio.open(path) as src:
                arr = src.read([b + 1 for b in bands] if bands else None)
            return arr.astype(np.float32)
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    except BadInputError:
        raise
    except Exception as e:  # PIL and GDAL raise many types for damaged files
        raise BadInputError(f"cannot read image {path}: {first_line(e, 160)}") from None


def _inside(root: Path, f: Path) -> Path:
    """``f`` resolved, refused when a symlink takes it out of the dataset's root."""
    real = f.resolve()
    if not real.is_relative_to(root.resolve()):
        raise BadInputError(f"{f} points outside the dataset root {root} (symlink to {real}); refused")
    return real


def _is_train(name: str, seed: str = "msc-france-external") -> bool:
    return unit_hash(f"{seed}:{name}") < 0.8


def _resize(x: np.ndarray, size: int, mode: str = "bilinear") -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    if mode == "nearest":
        return F.interpolate(t.float(), size=(size, size), mode="nearest")[0]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=t.shape[-1] > size)[0]


def _files(root: Path) -> list[tuple[Path, str, bool | None]]:
    """(file, class, is_train or None) for a folder-per-class tree, honouring train/ and test/."""
    splits = [(root / "train", True), (root / "test", False)] if (root / "train").is_dir() else [(root, None)]
    out = []
    for base, is_train in splits:
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    out.append((_inside(root, f), d.name, is_train))
    return out


def load_classification(kind: str, root: str | Path, size: int, bands: list[str]) -> ExternalData:
    """A folder-per-class dataset as tensors (per-band standardised on its training part)."""
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"{kind} dataset not found: {root}")
    files = _files(root)
    if not files:
        raise BadInputError(f"no images in {root} (expected one folder per class)")
    if kind == "eurosat-ms":
        try:
            idx = [EUROSAT_MS_BANDS.index(NAME_TO_S2[b]) for b in bands]
        except (KeyError, ValueError):
            raise BadInputError(f"EuroSAT-MS has no band among {bands}") from None
    else:
        if any(b not in ("red", "green", "blue") for b in bands):
            raise BadInputError(f"{kind} is RGB; bands {bands} are not all red/green/blue")
        idx = [["red", "green", "blue"].index(b) for b in bands]
    classes = sorted({c for _, c, _ in files})
    imgs, ys, train = [], [], []
    for f, c, is_train in files:
        arr = _read(f, idx if kind == "eurosat-ms" else None)
        if kind != "eurosat-ms":
            arr = arr[idx]
        imgs.append(_resize(arr, size))
        ys.append(classes.index(c))
        train.append(_is_train(f.name) if is_train is None else is_train)
    x = torch.stack(imgs)
    tr = torch.tensor(train)
    if tr.all() or not tr.any():
        raise BadInputError(f"{root}: the train/test split left one side empty; add more images")
    mu = x[tr].mean(dim=(0, 2, 3), keepdim=True)
    sd = x[tr].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ExternalData(kind, (x - mu) / sd, torch.tensor(ys), tr, classes, "classification")


def load_segmentation(root: str | Path, size: int, ignore_index: int = 0) -> ExternalData:
    """``images/*.tif`` + ``masks/*.tif`` pairs (first three bands used as RGB)."""
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise BadInputError(f"{root} needs images/ and masks/ folders")
    pairs = [(p, mask_dir / p.name) for p in sorted(img_dir.glob("*.tif"))]
    missing = [m.name for _, m in pairs if not m.exists()]
    if missing or not pairs:
        raise BadInputError(f"{root}: {'no images' if not pairs else 'masks missing for ' + ', '.join(missing[:3])}")
    pairs = [(_inside(root, p), _inside(root, m)) for p, m in pairs]
    imgs, masks, train = [], [], []
    for p, m in pairs:
        imgs.append(_resize(_read(p)[:3], size))
        masks.append(_resize(_read(m)[:1], size, mode="nearest")[0].long())
        train.append(_is_train(p.name))
    x, y = torch.stack(imgs), torch.stack(masks)
    codes = sorted(int(c) for c in y.unique() if int(c) != ignore_index)
    lut = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    for i, c in enumerate(codes):
        lut[c] = i
    tr = torch.tensor(train)
    if tr.all() or not tr.any():
        raise BadInputError(f"{root}: the train/test split left one side empty; add more images")
    mu = x[tr].mean(dim=(0, 2, 3), keepdim=True)
    sd = x[tr].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ExternalData("geotiff-segmentation", (x - mu) / sd, lut[y], tr, [str(c) for c in codes], "segmentation")


def label_fraction(targets: torch.Tensor, train: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """A stratified subset (bool mask) of the training samples, at least one per class."""
    if not 0 < fraction <= 1:
        raise BadInputError(f"label fraction {fraction} is not in (0, 1]")
    g = torch.Generator().manual_seed(seed)
    keep = torch.zeros_like(train)
    labels = targets if targets.dim() == 1 else torch.zeros(len(targets), dtype=torch.long)
    for c in labels[train].unique():
        idx = torch.nonzero(train & (labels == c)).flatten()
        n = max(1, int(round(fraction * len(idx))))
        keep[idx[torch.randperm(len(idx), generator=g)[:n]]] = True
    return keep
