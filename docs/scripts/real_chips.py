"""Draw docs/img/real-chips.png: chips built from real-shaped products (the test fixtures).

Run from the repository root: ``.venv/bin/python -m docs.scripts.real_chips``. It ingests and
builds a BD ORTHO tile with white fill declared nodata=255, an ESA SAFE tile at an orbit edge with
SCL clouds, and a Theia/MAJA tile with CLM/EDG masks, then shows each chip with its valid mask.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
import zarr  # noqa: E402

from msc_france.cli import main  # noqa: E402
from tests.conftest import write_region_file  # noqa: E402
from tests.real_products import bdortho_tile, safe_product, theia_product  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _build(tmp: Path, yaml_name: str, chip: tuple[float, float], size: int, gsd: float) -> zarr.Group:
    spec = yaml.safe_load((ROOT / "catalogs" / "local" / yaml_name).read_text())
    spec["source"]["path"] = str(tmp / "cat" / "catalog.json")
    (tmp / "c").mkdir()
    (tmp / "c" / yaml_name).write_text(yaml.safe_dump(spec))
    rec = {"name": "fig", "catalog": str(tmp / "c"), "chip_size_m": size, "chips_per_shard": 1,
           "sensors": {spec["name"]: {"gsd": gsd, "max_cloud_cover": 100, "min_valid_fraction": 0}},
           "time": {"start": "2000-01-01", "end": "2030-12-31"}}
    (tmp / "r.yaml").write_text(yaml.safe_dump(rec))
    reg = write_region_file(tmp / "r.gpkg", (chip[0] + 1, chip[1] + 1, chip[0] + size - 1, chip[1] + size - 1))
    assert main(["build", "--region", str(reg), "--recipe", str(tmp / "r.yaml"), "--out", str(tmp / "s.zarr"), "--quiet"]) == 0
    return zarr.open_group(str(tmp / "s.zarr"), mode="r")[spec["name"]]


def _rgb(img: np.ndarray, valid: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    x = img[list(order)].astype(float)
    lo, hi = np.percentile(x[:, valid], [2, 98]) if valid.any() else (0, 1)
    out = np.clip((x - lo) / (hi - lo + 1e-9), 0, 1).transpose(1, 2, 0)
    out[~valid] = 0.5 * out[~valid] + 0.5 * np.array([1.0, 0.0, 1.0])  # invalid: tinted magenta
    return out


def main_figure(out: Path) -> None:
    """Build the three chips and draw them."""
    panels = []
    with tempfile.TemporaryDirectory() as d:
        t = Path(d) / "bd"
        bdortho_tile(t / "dl" / "31-2021-0565-6272-LA93-0M50-E080.tif", 565440, 6272160, 480, seed=1, fill_cols=100)
        bdortho_tile(t / "dl" / "31-2021-0565-6272-LA93-0M50-IRC-E080.tif", 565440, 6272160, 480, seed=2, fill_cols=100)
        main(["catalog", "ingest", str(t / "dl"), "--out", str(t / "cat")])
        g = _build(t, "aerial.yaml", (565440, 6271920), 240, 1.5)
        panels.append(("BD ORTHO 0.5 m -> 1.5 m\nwhite fill declared nodata=255", g, (0, 1, 2)))
        from tests.builder.test_real_products import CHIP, _utm_origin

        when = dt.datetime(2022, 6, 14, 10, 56, tzinfo=dt.UTC)
        for name, make, yml in (("ESA SAFE N0400, UTM 30 -> Lambert-93\norbit edge (nodata 0) + SCL cloud/shadow",
                                 safe_product, "sentinel-2-l2a.yaml"),
                                ("Theia/MAJA FRE, int16, nodata -10000\nEDG edge + CLM cloud/shadow + SAT", theia_product,
                                 "sentinel-2-theia.yaml")):
            t = Path(d) / yml
            x0, y1 = _utm_origin()
            make(t / "dl", when, x0, y1)
            main(["catalog", "ingest", str(t / "dl"), "--out", str(t / "cat")])
            panels.append((name, _build(t, yml, CHIP, 480, 10), (2, 1, 0)))
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
        for ax, (title, g, order) in zip(axes, panels, strict=True):
            img, valid = g["image"][0], g["valid"][0].astype(bool)
            ax.imshow(_rgb(img, valid, order), interpolation="nearest")
            ax.set_title(f"{title}\nvalid {valid.mean():.0%} (magenta = not valid)", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("Chips built from real-shaped products (tests/real_products.py)", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.92))
        fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main_figure(ROOT / "docs" / "img" / "real-chips.png")
    print("wrote docs/img/real-chips.png")
