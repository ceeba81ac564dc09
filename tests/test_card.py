"""The dataset card's numbers equal the same numbers computed with geopandas from the index."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from msc_france.cli import main
from msc_france.store import Store


def test_the_cards_numbers_are_the_indexs(tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["card", str(tiny_store), "--out", str(tmp_path / "card")]) == 0
    assert {p.name for p in (tmp_path / "card").iterdir()} >= {"card.md", "card.json", "card-map.png",
                                                               "card-sensors.png"}
    card = json.loads((tmp_path / "card" / "card.json").read_text())
    idx = gpd.read_parquet(tiny_store / "index.parquet")
    assert card["n_chips"] == len(idx)
    assert card["splits"] == {k: int(v) for k, v in idx["split"].astype(str).value_counts().items()}
    for group, col in (("sentinel-2-l2a", "sentinel_2_l2a"), ("landsat-8-c2-l2", "landsat_8_c2_l2"),
                       ("aerial", "aerial")):
        row = card["layers"][group]
        assert row["status"] == {k: int(v) for k, v in idx[f"status_{col}"].astype(str).value_counts().items()}
        assert row["valid_fraction"]["median"] == pytest.approx(idx[f"valid_fraction_{col}"].median(), abs=1e-4)
        when = idx[f"datetime_{col}"].dropna()
        assert row["dates"]["first"] == str(when.min().date()) and row["dates"]["last"] == str(when.max().date())
        if group != "aerial":
            d = np.hypot(idx[f"shift_x_m_{col}"], idx[f"shift_y_m_{col}"])
            assert row["shift_m"]["distance"]["median"] == pytest.approx(float(np.median(d)), abs=1e-3)
    assert card["layers"]["aerial"]["reference"] is True
    md = (tmp_path / "card" / "card.md").read_text()
    # Licence and provenance as the sensor's YAML states them (the demo world is synthetic).
    assert f"{len(idx)} chips of 960 m" in md and "## Recipe" in md and "same as msc-france (synthetic)" in md
    assert card["layers"]["sentinel-2-l2a"]["source"] == "the demo world's Sentinel-2-like sensor (synthetic, msc-france)"


def test_days_from_the_reference_are_the_datetime_differences(tiny_store: Path) -> None:
    idx = gpd.read_parquet(tiny_store / "index.parquet")
    for col in ("sentinel_2_l2a", "landsat_8_c2_l2"):
        want = (idx[f"datetime_{col}"] - idx["datetime_aerial"]).abs().dt.total_seconds() / 86400
        assert np.allclose(idx[f"days_from_reference_{col}"], want, atol=1e-3)
    assert "days_from_reference_aerial" not in idx.columns and "days_from_reference_labels" not in idx.columns


def test_class_fractions_are_the_label_pixels_counted_with_numpy(tiny_store: Path) -> None:
    """Each chip's class_fraction_<code> equals a bincount of its stored label pixels (zarr-python
    reading the arrays), and the labels group's class_counts add them up per split.
    """
    import zarr

    idx = gpd.read_parquet(tiny_store / "index.parquet")
    cols = sorted((c for c in idx.columns if c.startswith("class_fraction_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    assert cols, "the tiny store has labels: the index must hold their class fractions"
    g = zarr.open_group(str(tiny_store), mode="r", zarr_format=3)["labels"]
    totals: dict[str, dict[str, int]] = {}
    for _, row in idx.iterrows():
        lab, ok = g["class"][int(row["chip_index"])], g["valid"][int(row["chip_index"])].astype(bool)
        if row["status_labels"] != "ok":
            assert all(np.isnan(row[c]) for c in cols)
            continue
        counts = np.bincount(lab[ok].astype(int), minlength=256)
        for c in cols:
            code = int(c.rsplit("_", 1)[1])
            assert row[c] == pytest.approx(counts[code] / ok.sum())
            totals.setdefault(str(row["split"]), {}).setdefault(str(code), 0)
            totals[str(row["split"])][str(code)] += int(counts[code])
        assert counts[[int(c.rsplit("_", 1)[1]) for c in cols]].sum() == ok.sum()  # no class left out
    assert g.attrs["class_counts"] == totals


def test_the_cards_class_distribution_is_the_indexs(tiny_store: Path) -> None:
    from msc_france.card import summarise

    s = summarise(Store.open(tiny_store))
    idx = gpd.read_parquet(tiny_store / "index.parquet")
    names = Store.open(tiny_store).classes().names
    cols = [c for c in idx.columns if c.startswith("class_fraction_")]
    labelled = idx[idx[cols].notna().all(axis=1)]
    for sp, part in labelled.groupby(labelled["split"].astype(str)):
        for c in cols:
            assert s["classes"][sp][names[int(c.rsplit("_", 1)[1])]] == pytest.approx(part[c].mean(), abs=1e-4)
