"""Draw docs/img/demo-splits.png: the demo store's chips coloured by split, from its index alone.

Run from the repository root after ``make demo``: ``.venv/bin/python -m docs.scripts.demo_splits``
(``--store`` and ``--out`` move it). The chip footprints and splits are read with geopandas from
``index.parquet``; nothing else of the store is opened.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

COLOURS = {"train": "#4c72b0", "val": "#dd8452", "test": "#c44e52", "buffer": "#d9d9d9"}


def draw(store: Path, out: Path) -> Path:
    """Write the split map of ``store`` to ``out``; returns ``out``."""
    idx = gpd.read_parquet(store / "index.parquet")
    fig, ax = plt.subplots(figsize=(5.2, 5.4))
    for split, colour in COLOURS.items():
        rows = idx[idx["split"] == split]
        if len(rows):
            rows.plot(ax=ax, color=colour, edgecolor="white", linewidth=0.6)
    counts = idx["split"].value_counts()
    ax.legend(handles=[Patch(color=c, label=f"{s} ({int(counts.get(s, 0))} chips)") for s, c in COLOURS.items()],
              loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, fontsize=8, frameon=False)
    ax.set_title(f"{store.name}: chips by split (Lambert-93)", fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", default="data/demo.zarr")
    ap.add_argument("--out", default="docs/img/demo-splits.png")
    a = ap.parse_args()
    print(f"wrote {draw(Path(a.store), Path(a.out))}")
