"""Draw docs/img/coreg-shifts.png and print the numbers of docs/results.md: the demo store's measured
per-chip shifts against what the world generator injected.

Run from the repository root after ``make demo``: ``.venv/bin/python -m docs.scripts.coreg_shifts``.
Only ``index.parquet`` is read (geopandas); the truth is the generator's ``SENSOR_MODELS``: a pixel
at x shows the ground at x + shift, so features appear at -shift. Sentinel-2 tile 31TCJ is off by
the model's shift, 31TDJ by -0.7 x it; chips mosaicked from both tiles are left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from msc_france.sources.demo_world import SENSOR_MODELS  # noqa: E402


def truth(col: str, items: list[str]) -> tuple[float, float] | None:
    """The displacement the generator injected for one chip of one sensor (None: a mosaic)."""
    if col.startswith("landsat"):
        s = SENSOR_MODELS["landsat-8"].shift_m
        return (-s[0], -s[1])
    if len(items) != 1:
        return None
    s, k = SENSOR_MODELS["sentinel-2"].shift_m, 1.0 if "31TCJ" in items[0] else -0.7
    return (-k * s[0], -k * s[1])


def draw(store: Path, out: Path) -> dict[str, dict[str, float]]:
    """Write the figure; return per sensor the median error, the share within 1 m and 0.1 px."""
    idx = gpd.read_parquet(store / "index.parquet")
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    numbers = {}
    for ax, (col, gsd, title) in zip(axes, (("sentinel_2_l2a", 10.0, "Sentinel-2 vs aerial"),
                                            ("landsat_8_c2_l2", 30.0, "Landsat-8 vs aerial")), strict=True):
        got, want = [], []
        for _, r in idx.iterrows():
            t = truth(col, list(r[f"item_ids_{col}"]))
            if t is None or not np.isfinite(r[f"coreg_quality_{col}"]):
                continue
            got.append((r[f"shift_x_m_{col}"], r[f"shift_y_m_{col}"]))
            want.append(t)
        g, w = np.array(got), np.array(want)
        err = np.hypot(*(g - w).T)
        numbers[col] = {"chips": len(err), "median_m": float(np.median(err)), "within_1m": float((err <= 1).mean()),
                        "within_0.1px": float((err <= 0.1 * gsd).mean()), "p90_m": float(np.percentile(err, 90))}
        ax.scatter(g[:, 0], g[:, 1], s=6, alpha=0.5, label="measured per chip")
        for t in {tuple(x) for x in w}:
            ax.plot(*t, "r+", ms=14, mew=2)
        ax.plot([], [], "r+", label="injected by the generator")
        ax.axhline(0, color="#aaa", lw=0.5)
        ax.axvline(0, color="#aaa", lw=0.5)
        lim = 3 * np.abs(w).max()
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="shift east (m)", ylabel="shift north (m)",
               title=f"{title}: median error {numbers[col]['median_m']:.2f} m")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return numbers


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, default=Path("data/demo.zarr"))
    ap.add_argument("--out", type=Path, default=Path("docs/img/coreg-shifts.png"))
    a = ap.parse_args()
    for k, v in draw(a.store, a.out).items():
        print(k, {n: round(x, 3) for n, x in v.items()})
