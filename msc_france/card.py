"""``msc-france card STORE``: a dataset card a maintainer can publish with a store.

It reads only the chip index and the store's attributes (no chip is decoded, so it takes seconds
for a 100,000-chip store) and writes ``card.md`` (the numbers and the recipe), ``card.json`` (the
same numbers for scripts) and PNG figures: the chips on a map coloured by split, and per sensor the
acquisition dates, the valid fractions and the measured co-registration shifts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from msc_france.selection import ChipSelection, select
from msc_france.store import Store
from msc_france.store.chip_index import ChipIndex
from msc_france.store.records import Status


def summarise(store: Store, selection: ChipSelection | None = None) -> dict[str, Any]:
    """The card's numbers, from the index and the attributes only (of the ``selection``'s chips)."""
    idx = store.index()
    if selection is not None:
        idx = select(idx, selection, store.url)
    ci = ChipIndex(idx)
    meta = store.meta
    out: dict[str, Any] = {
        "store": store.url, "n_chips": int(len(idx)), "chip_size_m": meta.chip_size_m,
        "regions": list(meta.regions), "complete": meta.complete, "recipe": dict(meta.recipe),
        "splits": {str(k): int(v) for k, v in idx["split"].value_counts().sort_index().items() if v},
        "layers": {},
    }
    for L in store.layers:
        g = L.group
        st = ci.status(g)
        row: dict[str, Any] = {
            "sensor": L.sensor, "gsd_m": L.gsd, "bands": list(L.bands),
            "status": {s.value: int((st == s.value).sum()) for s in Status if (st == s.value).any()},
            "by_split": {str(sp): int(((st == "ok") & (idx["split"] == sp)).sum())
                         for sp in out["splits"]},
            "source": store.facts(g).provenance,
            "licence": store.facts(g).licence,
        }
        vf = ci.get("valid_fraction", g).to_numpy(dtype=float)
        row["valid_fraction"] = _quantiles(vf)
        when = ci.datetime(g)
        if when.notna().any():
            row["dates"] = {"first": when.min().date().isoformat(), "last": when.max().date().isoformat(),
                            "distinct_days": int(when.dt.date.nunique())}
        if ci.has("shift_x_m", g):
            sx, sy = ci.get("shift_x_m", g).to_numpy(dtype=float), ci.get("shift_y_m", g).to_numpy(dtype=float)
            row["shift_m"] = {"x": _quantiles(sx), "y": _quantiles(sy), "distance": _quantiles(np.hypot(sx, sy)),
                              "quality": _quantiles(ci.get("coreg_quality", g).to_numpy(dtype=float))}
        out["layers"][L.group] = row
    fr = ci.class_fractions()
    if len(fr.columns):  # the mean over chips with labels of each chip's class shares, per split
        names = store.classes().names
        has = fr.notna().all(axis=1)
        out["classes"] = {
            str(sp): {names.get(int(c), str(c)): round(float(fr.loc[has & (idx["split"] == sp), c].mean()), 4)
                      for c in fr.columns}
            for sp in out["splits"] if (has & (idx["split"] == sp)).any()}
    measured = [g for g, r in out["layers"].items() if "shift_m" in r]
    for L in store.layers:  # the sensor the others were measured against
        if measured and not L.is_label and L.group not in measured:
            out["layers"][L.group]["reference"] = True
    return out


def _quantiles(v: np.ndarray) -> dict[str, float | int]:
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0}
    p = np.percentile(v, [5, 50, 95])
    return {"n": int(len(v)), "mean": round(float(v.mean()), 4), "p5": round(float(p[0]), 4),
            "median": round(float(p[1]), 4), "p95": round(float(p[2]), 4)}


def write_card(store: Store, out: Path, selection: ChipSelection | None = None) -> list[Path]:
    """Write ``card.md``, ``card.json`` and the figures into ``out`` (of the ``selection``'s chips,
    default all); returns their paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from msc_france.fsutil import atomic_path

    s = summarise(store, selection)
    idx = store.index() if selection is None else select(store.index(), selection, store.url)
    ci = ChipIndex(idx)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 6))
    colors = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c", "none": "#bbbbbb"}
    for sp, part in idx.groupby(idx["split"].astype(str)):
        part.plot(ax=ax, color=colors.get(sp, "#777777"), edgecolor="white", linewidth=0.2, label=sp)
    ax.set_title(f"{s['n_chips']} chips of {s['chip_size_m']} m by split (Lambert-93)")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors.get(k, "#777777")) for k in s["splits"]],
              labels=list(s["splits"]), loc="lower right")
    paths.append(_save(fig, out / "card-map.png", atomic_path))
    groups = [L for L in store.layers if not L.is_label]
    fig, axes = plt.subplots(3, len(groups), figsize=(4 * len(groups), 9), squeeze=False)
    for j, L in enumerate(groups):
        g = L.group
        when = ci.datetime(g).dropna()
        if len(when):
            import matplotlib.dates as mdates

            axes[0, j].hist(when.dt.tz_localize(None), bins=20, color="#555555")
            loc = mdates.AutoDateLocator(maxticks=5)
            axes[0, j].xaxis.set_major_locator(loc)
            axes[0, j].xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
        axes[0, j].set_title(f"{L.group}: acquisition dates", fontsize=9)
        axes[1, j].hist(ci.get("valid_fraction", g).dropna(), bins=20, range=(0, 1), color="#2ca02c")
        axes[1, j].set_title("valid fraction", fontsize=9)
        if ci.has("shift_x_m", g):
            axes[2, j].scatter(ci.get("shift_x_m", g), ci.get("shift_y_m", g), s=6, c=ci.get("coreg_quality", g),
                               cmap="viridis", vmin=0, vmax=1)
            axes[2, j].axhline(0, color="#999999", lw=0.5)
            axes[2, j].axvline(0, color="#999999", lw=0.5)
            axes[2, j].set_title("shift vs reference (m, colour: quality)", fontsize=9)
        else:
            axes[2, j].set_title("reference sensor (shifts are measured against it)", fontsize=9)
            axes[2, j].axis("off")
        for ax in axes[:, j]:
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    paths.append(_save(fig, out / "card-sensors.png", atomic_path))
    with atomic_path(out / "card.json") as tmp:
        tmp.write_text(json.dumps(s, indent=1, default=str))
    paths.append(out / "card.json")
    with atomic_path(out / "card.md") as tmp:
        tmp.write_text(_markdown(s))
    paths.append(out / "card.md")
    return paths


def _save(fig: Any, path: Path, atomic_path: Any) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _markdown(s: dict[str, Any]) -> str:
    lines = [f"# Dataset card: {s['recipe'].get('name', 'msc-france store')}", "",
             f"{s['n_chips']} chips of {s['chip_size_m']} m over {', '.join(s['regions'])} "
             f"({'complete' if s['complete'] else 'incomplete: a build has work left'}). Splits: "
             + ", ".join(f"{k} {v}" for k, v in s["splits"].items()) + ".", "",
             "![chips by split](card-map.png)", "",
             "| sensor | GSD (m) | bands | ok | flagged | other | dates | valid fraction (median) | shift (median m) "
             "| source | licence |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g, r in s["layers"].items():
        st = r["status"]
        other = sum(v for k, v in st.items() if k not in ("ok", "flagged"))
        dates = f"{r['dates']['first']} to {r['dates']['last']} ({r['dates']['distinct_days']} days)" if "dates" in r \
            else "-"
        shift = (f"{r['shift_m']['distance'].get('median', '-')}" if "shift_m" in r
                 else "reference" if r.get("reference") else "-")
        lines.append(f"| {g} | {r['gsd_m']:g} | {', '.join(r['bands'])} | {st.get('ok', 0)} | {st.get('flagged', 0)} "
                     f"| {other} | {dates} | {r['valid_fraction'].get('median', '-')} | {shift} | {r['source']} "
                     f"| {r['licence']} |")
    lines += ["", "![dates, valid fractions and shifts per sensor](card-sensors.png)", "",
              "Shifts are measured per chip against the reference sensor (docs/dataset-format.md, "
              "co-registration); a chip's numbers are in `index.parquet`.", ""]
    if s.get("classes"):
        splits = list(s["classes"])
        names = list(next(iter(s["classes"].values())))
        lines += ["## Land cover", "", "Mean share of each chip's labelled pixels (`class_fraction_<code>` in the "
                  "index), per split:", "", "| class | " + " | ".join(splits) + " |",
                  "|---|" + "---|" * len(splits)]
        lines += [f"| {n} | " + " | ".join(f"{s['classes'][sp][n]:.3f}" for sp in splits) + " |" for n in names]
        lines.append("")
    lines += ["## Recipe", "", "```yaml", yaml.safe_dump(s["recipe"], sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


__all__ = ["summarise", "write_card"]
