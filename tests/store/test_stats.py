"""Normalisation statistics come from training chips only: recomputed with zarr and numpy from
the stored pixels and the GeoParquet index (read by geopandas).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import zarr

from msc_france.store.schema import column


def test_statistics_are_over_valid_pixels_of_training_chips(tiny_store: Path) -> None:
    idx = gpd.read_parquet(tiny_store / "index.parquet")
    root = zarr.open_group(str(tiny_store), mode="r")
    group = "sentinel-2-l2a"
    g = root[group]
    train = idx[(idx["split"] == "train") & (idx[f"status_{column(group)}"] == "ok")]
    held = idx[(idx["split"] != "train") & (idx[f"status_{column(group)}"] == "ok")]
    assert len(train) and len(held), "the tiny store needs training and held-out chips for this test"

    def moments(rows: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
        vals = []
        for i in rows["chip_index"]:
            img = np.asarray(g["image"][int(i)], np.float64)
            vals.append(img[:, np.asarray(g["valid"][int(i)]).astype(bool)])
        v = np.concatenate(vals, axis=1)
        return v.mean(1), v.std(1)

    mean, std = moments(train)
    stats = g.attrs["stats"]
    assert np.allclose(stats["mean"], mean, atol=1e-3) and np.allclose(stats["std"], std, atol=1e-3)
    assert stats["over"] == "valid pixels of training chips with status ok"
    # Held-out pixels differ, so statistics pooled over every chip would not have matched.
    all_mean, _ = moments(idx[idx[f"status_{column(group)}"] == "ok"])
    assert not np.allclose(all_mean, mean, atol=1e-3)
