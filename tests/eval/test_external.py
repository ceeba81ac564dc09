"""External dataset readers on tiny generated samples in their usual layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image

from msc_france.errors import BadInputError
from msc_france.eval.external import EUROSAT_MS_BANDS, label_fraction, load_classification, load_segmentation


def make_folder_dataset(root: Path, classes=("Forest", "River", "Highway"), n: int = 10, size: int = 32,
                        suffix: str = ".jpg") -> Path:
    """A folder-per-class RGB dataset whose classes have distinct colours."""
    rng = np.random.default_rng(0)
    colours = {c: rng.integers(0, 255, 3) for c in classes}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            img = np.clip(colours[c] + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{c}_{i}{suffix}")
    return root


def make_eurosat_ms(root: Path, classes=("AnnualCrop", "SeaLake"), n: int = 8) -> Path:
    rng = np.random.default_rng(1)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = (rng.normal(1000 + 2000 * k, 50, (13, 16, 16))).astype(np.uint16)
            arr[EUROSAT_MS_BANDS.index("B04")] = 7000 + k  # a recognisable red band
            with rasterio.open(root / c / f"{c}_{i}.tif", "w", driver="GTiff", width=16, height=16, count=13,
                               dtype="uint16", crs="EPSG:32631", transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
                dst.write(arr)
    return root


def make_segmentation(root: Path, n: int = 10, size: int = 32) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(2)
    for i in range(n):
        mask = np.ones((size, size), np.uint8)
        mask[:, size // 2:] = 2
        noise = rng.integers(0, 5, (3, size, size)).astype(np.uint8)
        img = np.where(mask == 1, 50, 200)[None].repeat(3, 0).astype(np.uint8) + noise
        for name, arr in (("images", img), ("masks", mask[None])):
            with rasterio.open(root / name / f"tile_{i}.tif", "w", driver="GTiff", width=size, height=size,
                               count=arr.shape[0], dtype="uint8") as dst:
                dst.write(arr)
    return root


def test_folder_per_class(tmp_path: Path) -> None:
    d = load_classification("eurosat-rgb", make_folder_dataset(tmp_path / "EuroSAT_RGB"), 24, ["red", "green", "blue"])
    assert d.images.shape == (30, 3, 24, 24) and d.classes == ["Forest", "Highway", "River"]
    assert d.train.any() and (~d.train).any()
    assert torch.allclose(d.images[d.train].mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


def test_train_test_subfolders(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path / "ds" / "train", n=4, suffix=".png")
    make_folder_dataset(tmp_path / "ds" / "test", n=2, suffix=".png")
    d = load_classification("resisc45", tmp_path / "ds", 16, ["red", "green", "blue"])
    assert int(d.train.sum()) == 12 and int((~d.train).sum()) == 6


def test_eurosat_ms_picks_bands_by_name(tmp_path: Path) -> None:
    d = load_classification("eurosat-ms", make_eurosat_ms(tmp_path / "EuroSAT_MS"), 16, ["red", "green", "blue", "nir"])
    assert d.images.shape == (16, 4, 16, 16)
    with pytest.raises(BadInputError, match="no band"):
        load_classification("eurosat-ms", tmp_path / "EuroSAT_MS", 16, ["swir"])


def test_segmentation_pairs(tmp_path: Path) -> None:
    d = load_segmentation(make_segmentation(tmp_path / "seg"), 16)
    assert d.task == "segmentation" and d.targets.shape == (10, 16, 16)
    assert set(d.targets.unique().tolist()) == {0, 1} and d.classes == ["1", "2"]
    (tmp_path / "seg" / "masks" / "tile_3.tif").unlink()
    with pytest.raises(BadInputError, match="masks missing for tile_3.tif"):
        load_segmentation(tmp_path / "seg", 16)


def test_label_fraction_is_stratified() -> None:
    y = torch.tensor([0] * 50 + [1] * 50 + [2] * 4)
    train = torch.ones(104, dtype=torch.bool)
    sub = label_fraction(y, train, 0.1)
    assert [int((y[sub] == c).sum()) for c in range(3)] == [5, 5, 1]
    assert label_fraction(y, train, 1.0).all()
    with pytest.raises(BadInputError):
        label_fraction(y, train, 0.0)


def test_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="ucmerced dataset not found"):
        load_classification("ucmerced", tmp_path / "nope", 16, ["red", "green", "blue"])
