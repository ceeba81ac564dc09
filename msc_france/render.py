"""8-bit renderings of a store: preview figures and the X-STARS folder export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from msc_france.errors import BadInputError, StoreError
from msc_france.fsutil import atomic_path
from msc_france.grid import Chip
from msc_france.progress import Progress
from msc_france.regions import check_region_name
from msc_france.selection import ChipSelection, select
from msc_france.store import ChipReader, Layer, Store
from msc_france.store.chip_index import ChipIndex
from msc_france.store.records import Status

#: The colour of a class the labels' catalog gave none.
UNLISTED_COLOR = "#888888"


def _reader(store: Store) -> ChipReader:
    """One checked reader per store object (it caches the status arrays)."""
    r = getattr(store, "_chip_reader", None)
    if r is None:
        r = ChipReader(store)
        store._chip_reader = r  # type: ignore[attr-defined]
    return r


def rgb8(store: Store, layer: Layer, index: int) -> np.ndarray:
    """One chip as an (H, W, 3) uint8 RGB image, stretched 2-98% over its valid pixels."""
    spec_rgb = [b for b in ("red", "green", "blue") if b in layer.bands]
    if len(spec_rgb) != 3:
        raise BadInputError(f"sensor {layer.group} has no red/green/blue bands")
    bands = [layer.bands.index(b) for b in spec_rgb]
    reader = _reader(store)
    data = reader.read(layer.group, layer.data_name, index)[bands].astype(np.float32)
    valid = reader.read(layer.group, "valid", index).astype(bool) & np.all(data > 0, axis=0)
    out = np.zeros((*data.shape[1:], 3), np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(data[:, valid], [2, 98])
    scaled = np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1) ** (1 / 1.4)
    out[:] = np.moveaxis((scaled * 255).round().astype(np.uint8), 0, -1)
    out[~valid] = out[~valid] // 3  # invalid pixels shown dimmed
    return out


def labels_rgb(store: Store, layer: Layer, index: int) -> np.ndarray:
    """A label chip coloured with its sensor's class colours (``class_colors`` of its catalog YAML;
    grey for a class it gives none, black where there is no label).
    """
    from matplotlib.colors import to_rgb

    cls = _reader(store).read(layer.group, layer.data_name, index)
    colors = store.facts(layer.group).class_colors
    out = np.zeros((*cls.shape, 3), np.uint8)
    for v in np.unique(cls[cls > 0]):
        out[cls == v] = (np.array(to_rgb(colors.get(int(v), UNLISTED_COLOR))) * 255).astype(np.uint8)
    return out


def preview(store: Store, out: Path, n_chips: int = 6, seed: int = 0, progress: Progress | None = None,
            selection: ChipSelection | None = None) -> list[Path]:
    """Write side-by-side sensor views of a sample of chips (of ``selection``, default all) and a
    footprint map by status (``progress`` counts the chips drawn).
    """
    import matplotlib

    matplotlib.use("Agg")

    out.mkdir(parents=True, exist_ok=True)
    idx = store.index()
    chosen = idx if selection is None else select(idx, selection, store.url)
    built = chosen[ChipIndex(chosen).built([L.group for L in store.layers], (Status.OK, Status.FLAGGED))]
    if built.empty:
        raise BadInputError(f"store {store.path} has no built chip to preview"
                            + ("" if selection is None else " among the chips selected"))
    rng = np.random.default_rng(seed)
    pick = built.iloc[np.sort(rng.choice(len(built), min(n_chips, len(built)), replace=False))]
    return [_chips_figure(store, pick, out / "chips.png", progress), _footprints_figure(store, idx, out)]


def _chips_figure(store: Store, pick: Any, path: Path, progress: Progress | None) -> Path:
    """Every sensor of the ``pick`` chips side by side."""
    import matplotlib.pyplot as plt

    layers = store.layers
    fig, axes = plt.subplots(len(pick), len(layers), figsize=(3.2 * len(layers), 3.2 * len(pick)), squeeze=False)
    if progress is not None:
        progress.start(len(pick))
    for r, (_, row) in enumerate(pick.iterrows()):
        if progress is not None:
            progress.advance()
        i = int(row["chip_index"])
        for c, L in enumerate(layers):
            ax = axes[r][c]
            img = labels_rgb(store, L, i) if L.is_label else rgb8(store, L, i)
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{L.group}\n{L.gsd:g} m, {img.shape[0]} px", fontsize=9)
            if c == 0:
                ax.set_ylabel(row["chip_id"], fontsize=7)
    fig.suptitle(f"{Path(store.url.rstrip('/')).name}: the same ground in every sensor", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _footprints_figure(store: Store, idx: Any, out: Path) -> Path:
    """Every chip's footprint, coloured by status, per sensor."""
    import matplotlib.pyplot as plt

    layers = store.layers
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 4.5), squeeze=False)
    colors = {"ok": "#2ca02c", "flagged": "#ff7f0e", "dropped": "#9467bd", "failed": "#d62728",
              "nodata": "#7f7f7f", "pending": "#ffffff"}
    for ax, L in zip(axes[0], layers, strict=True):
        col = ChipIndex(idx).status(L.group)
        for st, color in colors.items():
            sub = idx[col == st]
            if len(sub):
                sub.plot(ax=ax, color=color, edgecolor="black", linewidth=0.4, label=f"{st} ({len(sub)})")
        ax.set_title(L.group, fontsize=10)
        ax.legend(fontsize=7, loc="lower left")
        ax.ticklabel_format(style="plain")
        ax.tick_params(labelsize=6)
    fig.suptitle("chip footprints (Lambert-93) by status", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = out / "footprints.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def export_xstars(store: Store, out: Path, selection: ChipSelection | None = None,
                  progress: Progress | None = None) -> int:
    """Write ``<Sensor>/<Region>/<chip>.png`` (8-bit RGB, same name in every sensor); ``progress``
    counts chips.

    Only chips valid in every sensor are exported, so every file has its counterparts.
    Returns the number of chips exported.
    """
    from PIL import Image

    idx = store.index()
    layers = [L for L in store.layers if not L.is_label]
    ok = ChipIndex(idx).built([L.group for L in layers])
    rows = idx[ok]
    if selection is not None:
        rows = select(rows, selection, store.url)
    # Folder names: each sensor's display name (the reference code's Sentinel, Landsat, SPOT).
    names = {L.group: store.facts(L.group).display_name for L in layers}
    seen: dict[str, str] = {}
    for g, n in names.items():
        if n in seen:
            raise BadInputError(f"sensors {seen[n]} and {g} are both displayed as '{n}': their PNGs would share a "
                                "folder; give one another display_name in its catalog YAML")
        seen[n] = g
    if progress is not None:
        progress.start(len(rows))
    for _, row in rows.iterrows():
        if progress is not None:
            progress.advance()
        region = (row["region"] or "unknown").split(",")[0]
        try:  # names become folders: a store written before names were checked may hold ".."
            check_region_name(region)
            Chip.from_id(str(row["chip_id"]))
        except BadInputError as e:
            raise StoreError(f"store {store.url} holds an unsafe name ({e}); nothing exported from it") from None
        for L in layers:
            d = out / names[L.group] / region
            d.mkdir(parents=True, exist_ok=True)
            with atomic_path(d / f"{row['chip_id']}.png") as tmp:
                Image.fromarray(rgb8(store, L, int(row["chip_index"]))).save(tmp, format="PNG")
    return len(rows)


__all__ = ["preview", "export_xstars", "rgb8"]
