"""The evaluation report: a Markdown summary and PNG figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from msc_france.render import WORLDCOVER_COLORS

SHORT = {"sentinel-2-l2a": "S2", "landsat-8-c2-l2": "L8", "aerial": "AER"}


def _s(name: str) -> str:
    return SHORT.get(name, name)


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(report: dict[str, Any]) -> str:
    """Tables: retrieval, classification, transfer and segmentation per model."""
    lines = [f"# Evaluation: {report['config']['name']}", "",
             f"Store `{report['config']['store']}`: {report['n_chips']['train']} training chips "
             f"({report['n_tiles']['train']} tiles), {report['n_chips']['held_out']} held-out chips "
             f"({report['n_tiles']['held_out']} tiles). Classes: {', '.join(report['classes'])}.", ""]
    models = report["models"]
    pairs = sorted({p for m in models.values() for p in m["retrieval"]})
    lines += ["## Cross-sensor retrieval (R@1 / R@5 / median rank)", "",
              "| model | " + " | ".join(f"{_s(p.split('->')[0])}->{_s(p.split('->')[1])}" for p in pairs) + " |",
              "|---" * (len(pairs) + 1) + "|"]
    for name, m in models.items():
        cells = []
        for p in pairs:
            r = m["retrieval"].get(p)
            cells.append("-" if r is None else f"{r['R@1']:.2f} / {r['R@5']:.2f} / {r['median_rank']:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sensors = sorted({s for m in models.values() for s in m["classification"]})
    lines += ["", "## Tile classification, dominant land-cover class (kNN / linear probe accuracy)", "",
              "| model | " + " | ".join(_s(s) for s in sensors) + " |", "|---" * (len(sensors) + 1) + "|"]
    for name, m in models.items():
        cells = [f"{m['classification'][s]['knn_acc']:.3f} / {m['classification'][s]['linear_acc']:.3f}"
                 if s in m["classification"] else "-" for s in sensors]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Cross-sensor transfer (linear probe trained on row sensor, tested on column sensor)", ""]
    for name, m in models.items():
        ss = m["sensors"]
        lines += [f"**{name}**", "", "| train \\ test | " + " | ".join(_s(s) for s in ss) + " |",
                  "|---" * (len(ss) + 1) + "|"]
        for a in ss:
            lines.append(f"| {_s(a)} | " + " | ".join(_f(m["transfer"][f"{a}->{b}"]) for b in ss) + " |")
        lines.append("")
    lines += ["## Patch-level linear segmentation (mIoU / pixel accuracy)", "",
              "| model | " + " | ".join(_s(s) for s in sensors) + " |", "|---" * (len(sensors) + 1) + "|"]
    for name, m in models.items():
        cells = [f"{m['segmentation'][s]['mIoU']:.3f} / {m['segmentation'][s]['pixel_acc']:.3f}"
                 if s in m["segmentation"] else "-" for s in sensors]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ext = {k for m in models.values() for k in m.get("external", {})}
    if ext:
        lines += ["", "## External datasets", ""]
        for name, m in models.items():
            for k, v in m.get("external", {}).items():
                lines.append(f"- {name} / {k}: " + "; ".join(
                    f"{frac}: " + ", ".join(f"{kk} {_f(vv)}" for kk, vv in r.items()) for frac, r in v.items()
                    if isinstance(r, dict)))
    return "\n".join(lines) + "\n"


def figures(report: dict[str, Any], figs: dict[str, Any], held: Any, names: dict[int, str], out: Path) -> list[Path]:
    """retrieval.png (R@k curves), transfer.png (heat maps), segmentation.png (maps vs truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    paths = []
    pairs = sorted(figs["ranks"])
    if pairs:
        cols = min(3, len(pairs))
        rows = (len(pairs) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
        for ax, p in zip(axes.flat, pairs):
            for name, ranks in figs["ranks"][p].items():
                ks = np.arange(1, min(50, len(ranks)) + 1)
                ax.plot(ks, [(ranks <= k).float().mean().item() for k in ks], label=name)
            a, b = p.split("->")
            ax.set_title(f"{_s(a)} -> {_s(b)}", fontsize=9)
            ax.set_xlabel("k")
            ax.set_ylabel("recall@k")
            ax.set_ylim(0, 1)
        for ax in list(axes.flat)[len(pairs):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "retrieval.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items()):
        ss = m["sensors"]
        mat = np.array([[m["transfer"][f"{a}->{b}"] for b in ss] for a in ss])
        ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
        for i in range(len(ss)):
            for j in range(len(ss)):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(len(ss)), [_s(s) for s in ss])
        ax.set_yticks(range(len(ss)), [_s(s) for s in ss])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("test sensor")
        ax.set_ylabel("probe trained on")
    fig.tight_layout()
    paths.append(out / "transfer.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    # Segmentation maps: the aerial view (or the first sensor), the truth and each model's prediction.
    sensor = "aerial" if "aerial" in held.images else next(iter(held.images))
    from matplotlib.colors import to_rgb

    palette = [to_rgb(WORLDCOVER_COLORS.get(int(report["classes"].get(names[i], 0)), "#888888"))
               for i in range(len(names))]
    cmap = ListedColormap(palette or [(0.5, 0.5, 0.5)])
    picks = np.linspace(0, held.labels.shape[0] - 1, 3).astype(int)
    seg_models = [n for n in figs["seg"] if sensor in figs["seg"][n]]
    fig, axes = plt.subplots(len(picks), 2 + len(seg_models), figsize=(2.6 * (2 + len(seg_models)), 2.6 * len(picks)),
                             squeeze=False)
    for r, i in enumerate(picks):
        img = held.images[sensor][i].permute(1, 2, 0).numpy()
        lo, hi = np.percentile(img, [2, 98], axis=(0, 1))
        axes[r][0].imshow(np.clip((img - lo) / np.maximum(hi - lo, 1e-6), 0, 1))
        lab = held.labels[i].numpy().astype(float)
        lab[lab < 0] = np.nan
        axes[r][1].imshow(lab, cmap=cmap, vmin=0, vmax=max(len(names) - 1, 1), interpolation="nearest")
        for c, n in enumerate(seg_models):
            axes[r][2 + c].imshow(figs["seg"][n][sensor][i].numpy(), cmap=cmap, vmin=0, vmax=max(len(names) - 1, 1),
                                  interpolation="nearest")
            if r == 0:
                axes[r][2 + c].set_title(n, fontsize=9)
        if r == 0:
            axes[r][0].set_title(_s(sensor), fontsize=9)
            axes[r][1].set_title("truth", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    paths.append(out / "segmentation.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


__all__ = ["markdown", "figures", "torch"]
