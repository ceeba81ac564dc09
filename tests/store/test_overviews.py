"""Overview levels: the stored level against an independent area average, what the dataset reads,
and what validate catches.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from msc_france.errors import BadInputError
from msc_france.store.overviews import area_average


def _reference(image: np.ndarray, valid: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule, pixel by pixel in plain Python: the mean of the valid pixels under
    each output pixel (rounded half to even), valid when at least half of them are.
    """
    b, h, w = image.shape
    out = np.zeros((b, h // f, w // f), image.dtype)
    ok = np.zeros((h // f, w // f), np.uint8)
    for r in range(h // f):
        for c in range(w // f):
            m = valid[r * f : (r + 1) * f, c * f : (c + 1) * f] != 0
            ok[r, c] = m.sum() * 2 >= f * f
            for k in range(b):
                vals = image[k, r * f : (r + 1) * f, c * f : (c + 1) * f][m]
                out[k, r, c] = round(float(np.mean(vals.astype(np.float64)))) if len(vals) else 0
    return out, ok


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_area_average_matches_the_rule_pixel_by_pixel(dtype: str) -> None:
    rng = np.random.default_rng(3)
    hi = np.iinfo(dtype).max
    image = rng.integers(0, hi, (3, 20, 20)).astype(dtype)
    valid = (rng.random((20, 20)) > 0.3).astype(np.uint8)
    valid[:5, :5] = 0  # a whole output pixel without data
    for f in (2, 4, 5):
        got, got_valid = area_average(image, valid, f)
        want, want_valid = _reference(image, valid, f)
        assert got.dtype == image.dtype
        np.testing.assert_array_equal(got_valid, want_valid)
        np.testing.assert_array_equal(got, want)
    # Nodata never bleeds into the average: a block with one valid pixel of 200 is 200, not 50.
    img = np.zeros((1, 2, 2), np.uint8)
    img[0, 0, 0] = 200
    one = np.array([[1, 0], [0, 0]], np.uint8)
    out, ok = area_average(img, one, 2)
    assert out[0, 0, 0] == 200 and ok[0, 0] == 0


def test_area_average_refuses_a_factor_that_does_not_divide() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        area_average(np.zeros((1, 10, 10), np.uint8), np.ones((10, 10), np.uint8), 3)


def test_built_overview_is_the_area_average_of_the_full_resolution_chip(tiny_store: Path) -> None:
    root = zarr.open_group(str(tiny_store), mode="r")
    g = root["aerial"]
    assert [lv["factor"] for lv in g.attrs["multiscales"]["layout"]] == [1, 5]
    ov = root["aerial/overviews/5"]
    full, valid = np.asarray(g["image"][:]), np.asarray(g["valid"][:])
    status = np.asarray(g["status"][:])
    assert ov["image"].shape == (full.shape[0], full.shape[1], full.shape[2] // 5, full.shape[3] // 5)
    checked = 0
    for i in range(full.shape[0]):
        if status[i] != 1:
            continue
        want, want_valid = _reference(full[i][:, :40, :40], valid[i][:40, :40], 5)  # a corner: the loop is slow
        np.testing.assert_array_equal(np.asarray(ov["image"][i])[:, :8, :8], want)
        np.testing.assert_array_equal(np.asarray(ov["valid"][i])[:8, :8], want_valid)
        # The whole chip against a vectorised numpy mean (every chip of the demo is fully valid).
        assert valid[i].all()
        blocks = full[i].reshape(full.shape[1], full.shape[2] // 5, 5, full.shape[3] // 5, 5).astype(np.float64)
        np.testing.assert_array_equal(np.asarray(ov["image"][i]), np.rint(blocks.mean(axis=(2, 4))).astype(full.dtype))
        checked += 1
    assert checked >= 2
    # Its coordinates are the coarser grid's pixel centres, for xarray and rioxarray.
    x0 = float(root["aerial/chip_xmin"][0])
    np.testing.assert_allclose(np.asarray(ov["x"][0])[:2], [x0 + 3.75, x0 + 11.25])
    assert list(np.asarray(ov["spatial_transform"][0])[:3]) == [7.5, 0.0, x0]


def test_dataset_reads_the_coarsest_level_that_is_large_enough(tiny_store: Path) -> None:
    from msc_france.data import MSCFranceDataset

    root = zarr.open_group(str(tiny_store), mode="r")
    ds = MSCFranceDataset(tiny_store, split=None, bands=["red", "green", "blue"], size=32, tiles=2)
    assert ds.levels == {"sentinel-2-l2a": 1, "landsat-8-c2-l2": 1, "aerial": 5}  # 64 px needed, 128 px stored
    full = MSCFranceDataset(tiny_store, split=None, bands=["red", "green", "blue"], size=200)
    assert full.levels["aerial"] == 1  # the 128 px level is too coarse for 200 px
    ci = ds.chip_index[0]
    stats = root["aerial"].attrs["stats"]
    ov = np.asarray(root["aerial/overviews/5/image"][ci])[:3].astype(np.float32)
    want = torch.from_numpy(ov)[None]
    want = torch.nn.functional.interpolate(want, size=(64, 64), mode="bilinear", antialias=True)[0]
    mean = torch.tensor(stats["mean"][:3])[:, None, None]
    std = torch.tensor(stats["std"][:3])[:, None, None]
    got = ds.read(0, ["aerial"])["aerial"]["image"]
    torch.testing.assert_close(got, ((want - mean) / std)[:, :32, :32], atol=1e-4, rtol=1e-4)
    # Exactly the stored level when no resize is left: 128 px from the 128 px overview.
    exact = MSCFranceDataset(tiny_store, split=None, bands=["red", "green", "blue"], size=128)
    assert exact.levels["aerial"] == 5
    torch.testing.assert_close(exact.read(0, ["aerial"])["aerial"]["image"], (torch.from_numpy(ov) - mean) / std)


def test_validate_catches_a_changed_overview(tiny_store: Path, tmp_path: Path) -> None:
    from msc_france.store import Store
    from msc_france.store.validate import validate

    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, copy)
    assert validate(Store.open(copy)).ok
    a = zarr.open_array(str(copy / "aerial" / "overviews" / "5" / "image"), mode="r+")
    data = np.asarray(a[0])
    data[0, 0, 0] ^= 1
    a[0] = data
    rep = validate(Store.open(copy))
    assert any("overview 5 checksum mismatch" in c for c in rep.corrupt)


def test_recipe_refuses_an_overview_factor_that_does_not_divide_the_chip(tiny_recipe: Path, tiny_region: Path,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from msc_france.cli import main

    rec = yaml.safe_load(tiny_recipe.read_text())
    rec["sensors"]["aerial"]["overviews"] = [3]  # 640 px
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(rec))
    code = main(["build", "--region", str(tiny_region), "--recipe", str(p), "--out", str(tmp_path / "s.zarr"),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "overview factor 3 of aerial does not divide its 640 px" in err[0]
    assert not (tmp_path / "s.zarr").exists()
    with pytest.raises(BadInputError):
        from msc_france.config.base import parse_model
        from msc_france.config.recipe import Recipe

        parse_model(Recipe, {**rec, "sensors": {"aerial": {"overviews": [1]}}}, "recipe")
