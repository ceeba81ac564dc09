"""The dataset card's numbers equal the same numbers computed with geopandas from the index."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from msc_france.cli import main


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
    assert f"{len(idx)} chips of 960 m" in md and "## Recipe" in md and "Etalab" in md


def test_days_from_the_reference_are_the_datetime_differences(tiny_store: Path) -> None:
    idx = gpd.read_parquet(tiny_store / "index.parquet")
    for col in ("sentinel_2_l2a", "landsat_8_c2_l2"):
        want = (idx[f"datetime_{col}"] - idx["datetime_aerial"]).abs().dt.total_seconds() / 86400
        assert np.allclose(idx[f"days_from_reference_{col}"], want, atol=1e-3)
    assert "days_from_reference_aerial" not in idx.columns and "days_from_reference_labels" not in idx.columns
