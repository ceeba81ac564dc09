"""The evaluation report: a Markdown summary and PNG figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msc_france.render import UNLISTED_COLOR

SHORT = {"sentinel-2-l2a": "S2", "landsat-8-c2-l2": "L8", "aerial": "AER"}


def _s(name: str) -> str:
    return SHORT.get(name, name)


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and v == v]
    return sum(vals) / len(vals) if vals else None


#: The headline numbers, the semantic transfers first: what no learning-free feature should reach.
HEADLINE = ("fractions R2 cross", "transfer bal. acc cross", "seg. transfer mIoU", "R@1 mean shifted", "R@1 mean")


@dataclass(frozen=True)
class SummaryRow:
    """One model's headline numbers on one split (means over sensors and ordered sensor pairs).

    ``row[label]`` reads a number by its table label (:data:`SUMMARY`).
    """

    model: str
    fractions_r2_cross: float | None
    transfer_bal_acc_cross: float | None
    seg_transfer_miou: float | None
    r1_mean_shifted: float | None
    r1_mean: float | None
    r1_cls: float | None
    r1_dense: float | None
    fractions_r2_same: float | None
    linear_acc: float | None
    linear_bal_acc: float | None
    miou: float | None

    def __getitem__(self, label: str) -> Any:
        return self.model if label == "model" else getattr(self, SUMMARY[label])


#: Table label -> :class:`SummaryRow` field, in table order.
SUMMARY = {"fractions R2 cross": "fractions_r2_cross", "transfer bal. acc cross": "transfer_bal_acc_cross",
           "seg. transfer mIoU": "seg_transfer_miou", "R@1 mean shifted": "r1_mean_shifted", "R@1 mean": "r1_mean",
           "R@1 cls": "r1_cls", "R@1 dense": "r1_dense", "fractions R2 same": "fractions_r2_same",
           "linear acc": "linear_acc", "linear bal. acc": "linear_bal_acc", "mIoU": "miou"}


def summary_row(name: str, m: dict[str, Any]) -> SummaryRow:
    """The headline numbers of one model's report entry."""
    ss, fr = m["sensors"], m["fractions_r2"]
    cross = [(a, b) for a in ss for b in ss if a != b]
    r1 = {k: m["retrieval"][k].get("mean_R@1") for k in ("mean", "cls", "dense")}
    return SummaryRow(
        name, _mean([fr[f"{a}->{b}"] for a, b in cross]),
        _mean([m["transfer"][f"{a}->{b}"]["balanced_acc"] for a, b in cross]),
        _mean([m["segmentation"][a].get("transfer_mIoU", {}).get(b) for a, b in cross]),
        m.get("retrieval_shifted", {}).get("mean", {}).get("mean_R@1"), r1["mean"], r1["cls"], r1["dense"],
        _mean([fr[f"{s}->{s}"] for s in ss]), _mean([m["classification"][s]["linear_acc"] for s in ss]),
        _mean([m["classification"][s]["linear_balanced_acc"] for s in ss]),
        _mean([m["segmentation"][s]["mIoU"] for s in ss]))


def summary_rows(report: dict[str, Any]) -> list[SummaryRow]:
    """One row per model of a split view."""
    return [summary_row(name, m) for name, m in report["models"].items()]


def split_view(report: dict[str, Any], split: str) -> dict[str, Any]:
    """One held-out split of a report, shaped as a single-split report (what the tables read)."""
    sub = report["splits"][split]
    return {"config": report["config"], "classes": report["classes"], "split": split,
            "roles": report.get("roles", {}), "groups": report.get("groups", {}),
            "models": {n: {**m, "external": report.get("external", {}).get(n, {})} for n, m in sub["models"].items()},
            "majority": sub["majority"], "chance_R@1": sub["chance_R@1"], "chance": sub.get("chance", {}),
            "intervals": sub.get("intervals"), "blocks": sub.get("blocks"),
            "n_chips": {"train": report["n_chips"]["train"], "held_out": report["n_chips"][split]},
            "n_tiles": {"train": report["n_tiles"]["train"], "held_out": report["n_tiles"][split]}}


def interval95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95 % Student-t interval of the mean (0 for one value)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and x == x], np.float64)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else float("nan")), 0.0
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def group_rows(view: dict[str, Any]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Headline numbers aggregated by group (e.g. seeds): metric -> (mean, 95 % half-width, runs)."""
    rows = summary_rows(view)
    groups: dict[str, list[SummaryRow]] = {}
    for r in rows:
        groups.setdefault(view["groups"].get(r["model"], r["model"]), []).append(r)
    return {g: {k: (*interval95([r[k] for r in rs]), len(rs)) for k in HEADLINE} for g, rs in groups.items()}


@dataclass(frozen=True)
class Claim:
    """A model group against the best rival (the baseline group with the highest value) on one
    headline number, each with its interval: the block bootstrap over held-out chips combined
    with the group's runs when the report has it, else the 95 % t-interval over runs.
    """

    metric: str
    baseline: str
    baseline_mean: float
    baseline_low: float
    baseline_high: float
    group: str
    mean: float
    low: float
    high: float
    runs: int

    @property
    def beats(self) -> bool:
        """The model's interval lies wholly above the rival's."""
        return self.low > self.baseline_high

    @property
    def ties(self) -> bool:
        """The two intervals overlap."""
        return not self.beats and self.high >= self.baseline_low

    def cell(self) -> str:
        """The claim as a table cell."""
        if self.mean != self.mean:
            return "-"
        verdict = "yes" if self.beats else "ties" if self.ties else "loses"
        return f"{_interval_text(self.mean, self.low, self.high, self.runs)}: {verdict} ({self.mean - self.baseline_mean:+.3f})"


def _interval_text(mean: float, low: float, high: float, runs: int = 1) -> str:
    spread = f" [{low:.3f}, {high:.3f}]" if high > low else ""
    return f"{mean:.3f}{spread}" + (f" (n={runs})" if runs > 1 else "")


def group_intervals(view: dict[str, Any]) -> dict[str, dict[str, tuple[float, float, float, int]]]:
    """Group -> headline -> (value, low, high, runs): the report's bootstrap intervals, or a
    t-interval over runs for a report without them.
    """
    if view.get("intervals"):
        return {g: {k: (v["value"], v["low"], v["high"], v["runs"]) for k, v in m.items()}
                for g, m in view["intervals"].items()}
    return {g: {k: (mean, mean - hw, mean + hw, n) for k, (mean, hw, n) in m.items()}
            for g, m in group_rows(view).items()}


def claims(view: dict[str, Any]) -> list[Claim]:
    """For every headline number and model group: the best rival and the group against it."""
    agg = group_intervals(view)
    roles = view["roles"]
    base = {g for n, g in view["groups"].items() if roles.get(n) == "baseline"}
    out = []
    for k in HEADLINE:
        scored = [(agg[g][k][0], g) for g in base if k in agg[g] and agg[g][k][0] == agg[g][k][0]]
        if not scored:
            continue
        best, who = max(scored)
        _, blo, bhi, _ = agg[who][k]
        out += [Claim(k, who, best, blo, bhi, g, *agg[g][k]) for g in agg if g not in base and k in agg[g]]
    return out


def claims_markdown(cl: list[Claim]) -> list[str]:
    """The claims as a table: one row per headline number, one column per model group."""
    groups = list(dict.fromkeys(c.group for c in cl))
    lines = ["| metric | best baseline | " + " | ".join(groups) + " |", "|---" * (len(groups) + 2) + "|"]
    for metric in dict.fromkeys(c.metric for c in cl):
        row = {c.group: c for c in cl if c.metric == metric}
        first = next(iter(row.values()))
        lines.append(f"| {metric} | {first.baseline} "
                     + _interval_text(first.baseline_mean, first.baseline_low, first.baseline_high) + " | "
                     + " | ".join(row[g].cell() if g in row else "-" for g in groups) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """Every held-out split in turn (val first: where choices are made; test: the report)."""
    cfg = report["config"]
    splits = list(report["splits"])
    parts = [f"# Evaluation: {cfg['name']}", "",
             f"Held-out splits, each scored on its own: {', '.join(splits)}. Choices (steps, learning rate, "
             "loss settings) are made on val; test is read for the report. Intervals are 95 % block-bootstrap "
             "intervals: the held-out chips' spatial blocks drawn with replacement, together with a group's runs "
             "(seeds), the same draws for every row. 'yes' means the model's interval lies wholly above the "
             "strongest rival's (the baseline group with the highest value), 'ties' that they overlap, 'loses' "
             "that it lies below.", ""]
    for h in splits:
        parts.append(_split_markdown(split_view(report, h)))
    return "\n".join(parts)


def _chance_text(report: dict[str, Any]) -> str:
    """Every retrieval chance level, from its query and gallery counts."""
    c = report.get("chance") or {}
    if not c:
        return f"retrieval R@1 = {report['chance_R@1']:.4f}"
    text = f"retrieval R@1 = 1/{c['gallery']} = {c['R@1']:.4f} ({c['queries']} queries, {c['gallery']} gallery tiles)"
    if "R@1 shifted" in c:
        text += (f", shifted gallery R@1 = 1/{c['shifted_gallery']} = {c['R@1 shifted']:.4f} "
                 f"({c['shifted_queries']} queries, {c['shifted_gallery']} gallery tiles)")
    if c.get("classes_absent"):
        text += f". Classes this split never shows: {', '.join(c['classes_absent'])}"
    return text


def _gallery_parts(models: dict[str, Any]) -> list[str]:
    """The table of ``gallery_diagnostics``: grid, shift alone, turn alone, both (empty without it)."""
    parts = {n: m for n, m in models.items() if "retrieval_shift_only" in m and "retrieval_turn_only" in m}
    if not parts:
        return []
    lines = ["", "### What defeats retrieval: the shift, the turn, or both (mean R@1 over the six pairs; "
             "mean-pooled / cls / dense)", "",
             "| model | grid (co-located) | shifted only | turned only | shifted and turned |", "|---|---|---|---|---|"]
    for name, entry in parts.items():
        cells = [entry[e] for e in ("retrieval", "retrieval_shift_only", "retrieval_turn_only", "retrieval_shifted")]
        lines.append(f"| {name} | " + " | ".join(
            " / ".join(f"{c[k]['mean_R@1']:.3f}" for k in ("mean", "cls", "dense")) for c in cells) + " |")
    return lines


def _split_markdown(report: dict[str, Any]) -> str:
    """The tables of one split view."""
    cfg = report["config"]
    maj = report["majority"]
    lines = [f"## Split: {report['split']}", "",
             f"Store `{cfg['store']}`: {report['n_chips']['train']} training chips "
             f"({report['n_tiles']['train']} tiles), {report['n_chips']['held_out']} held-out chips "
             f"({report['n_tiles']['held_out']} tiles). Classes: {', '.join(report['classes'])}. "
             f"Checkpoints evaluated with their {cfg['features']} backbone; per-sensor centring "
             f"{'on' if cfg['center'] else 'off'}; probes on {cfg['probe_features']} features.", "",
             f"Chance: {_chance_text(report)}; majority class ({maj['class']}): accuracy "
             f"{maj['acc']:.3f}, balanced accuracy {maj['balanced_acc']:.3f}, macro-F1 {maj['macro_f1']:.3f}; "
             "fraction R2 = 0 for predicting the mean.", "",
             f"### Against the strongest rival ({report['split']}, {report.get('blocks') or '?'} held-out blocks)", "",
             *claims_markdown(claims(report)), "",
             "### Summary (means over sensors / ordered sensor pairs)", ""]
    rows = summary_rows(report)
    keys = list(SUMMARY)
    lines += ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {r['model']} | " + " | ".join(_f(r[k]) for k in keys) + " |" for r in rows]
    models = report["models"]
    lines += _retrieval_md(models) + _shifted_md(models) + _gallery_parts(models) + _groups_md(report)
    lines += _diagnostics_md(models) + _classification_md(models, maj) + _transfer_md(models)
    lines += _segmentation_md(models) + _label_budget_md(models) + _external_md(models)
    return "\n".join(lines) + "\n"


def _retrieval_md(models: dict[str, Any]) -> list[str]:
    """Cross-sensor retrieval tables, one per feature kind."""
    lines: list[str] = []
    for kind in ("mean", "cls", "dense"):
        pairs = sorted({p for m in models.values() for p in m["retrieval"][kind] if "->" in p})
        lines += ["", f"### Cross-sensor retrieval, {kind} features (R@1 / R@5 / median rank)", "",
                  "| model | " + " | ".join(f"{_s(p.split('->')[0])}->{_s(p.split('->')[1])}" for p in pairs) + " |",
                  "|---" * (len(pairs) + 1) + "|"]
        for name, m in models.items():
            cells = []
            for p in pairs:
                r = m["retrieval"][kind].get(p)
                cells.append("-" if r is None else f"{r['R@1']:.2f} / {r['R@5']:.2f} / {r['median_rank']:.0f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _shifted_md(models: dict[str, Any]) -> list[str]:
    """Retrieval against the shifted and turned gallery."""
    lines: list[str] = []
    shifted = {n: m["retrieval_shifted"] for n, m in models.items() if "retrieval_shifted" in m}
    if shifted:
        pairs = sorted({p for m in shifted.values() for p in m["mean"] if "->" in p})
        lines += ["", "### Retrieval that layout cannot solve (gallery shifted by a quarter tile, each tile rotated "
                  "or flipped; positive: the tile of largest overlap; R@1 mean / cls / dense)", "",
                  "| model | " + " | ".join(f"{_s(p.split('->')[0])}->{_s(p.split('->')[1])}" for p in pairs) + " |",
                  "|---" * (len(pairs) + 1) + "|"]
        for name, m in shifted.items():
            lines.append(f"| {name} | " + " | ".join(
                " / ".join(f"{m[k][p]['R@1']:.2f}" for k in ("mean", "cls", "dense")) if p in m["mean"] else "-"
                for p in pairs) + " |")
    return lines


def _groups_md(report: dict[str, Any]) -> list[str]:
    """Runs of one configuration aggregated."""
    lines: list[str] = []
    agg = group_rows(report)
    if any(v[HEADLINE[0]][2] > 1 for v in agg.values()):
        lines += ["", "### Runs of one configuration aggregated (mean ± 95 % interval, n runs)", "",
                  "| group | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
        for g, v in agg.items():
            lines.append(f"| {g} | " + " | ".join(f"{v[k][0]:.3f} ± {v[k][1]:.3f} ({v[k][2]})" for k in HEADLINE) + " |")
    return lines


def _diagnostics_md(models: dict[str, Any]) -> list[str]:
    """Training diagnostics (MSAD projection, continual)."""
    lines: list[str] = []
    diag = {n: m["diagnostics"] for n, m in models.items() if m.get("diagnostics")}
    if diag:
        lines += ["", "### Training diagnostics", "",
                  "MSAD projection: retrieval with the student's dense tokens through the MSAD projection heads "
                  "(what the loss aligns; not a property of the backbone). Continual: the adapted student's "
                  "target-sensor features retrieving the frozen source model's features.", ""]
        for n, d in diag.items():
            if "msad_projection" in d:
                proj = ", ".join(f"{_s(p.split('->')[0])}->{_s(p.split('->')[1])} {v['R@1']:.3f}"
                                 for p, v in d["msad_projection"].items())
                lines.append(f"- {n}, MSAD projection R@1: {proj}")
            if "continual" in d:
                c = d["continual"]
                lines.append(f"- {n}, {c['pair']} R@1: " + ", ".join(f"{k} {c[k]['R@1']:.3f}" for k in ("cls", "mean", "dense")))
    return lines


def _classification_md(models: dict[str, Any], maj: dict[str, Any]) -> list[str]:
    """Tile classification per sensor, with the majority class."""
    lines: list[str] = []
    sensors = sorted({s for m in models.values() for s in m["classification"]})
    lines += ["", "### Tile classification, dominant land-cover class (linear probe: accuracy / balanced accuracy / "
              "macro-F1; kNN accuracy)", "",
              "| model | " + " | ".join(_s(s) for s in sensors) + " |", "|---" * (len(sensors) + 1) + "|"]
    for name, m in models.items():
        cells = []
        for s in sensors:
            c = m["classification"].get(s)
            cells.append("-" if c is None else f"{c['linear_acc']:.3f} / {c['linear_balanced_acc']:.3f} / "
                         f"{c['linear_macro_f1']:.3f}; {c['knn_acc']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| majority class | " + " | ".join(f"{maj['acc']:.3f} / {maj['balanced_acc']:.3f} / "
                                                  f"{maj['macro_f1']:.3f}" for _ in sensors) + " |")
    return lines


def _transfer_md(models: dict[str, Any]) -> list[str]:
    """Transfer and class-fraction matrices."""
    lines: list[str] = []
    for title, key, fmt in (("Cross-sensor transfer (linear probe trained on row sensor, tested on column sensor; "
                             "balanced accuracy)", "transfer", lambda v: _f(v["balanced_acc"])),
                            ("Class-fraction probe (ridge trained on row sensor, tested on column sensor; held-out R2)",
                             "fractions_r2", _f)):
        lines += ["", f"### {title}", ""]
        for name, m in models.items():
            ss = m["sensors"]
            lines += [f"**{name}**", "", "| train \\ test | " + " | ".join(_s(s) for s in ss) + " |",
                      "|---" * (len(ss) + 1) + "|"]
            for a in ss:
                lines.append(f"| {_s(a)} | " + " | ".join(fmt(m[key][f"{a}->{b}"]) for b in ss) + " |")
            lines.append("")
    return lines


def _segmentation_md(models: dict[str, Any]) -> list[str]:
    """Patch-level segmentation per sensor."""
    lines: list[str] = []
    sensors = sorted({s for m in models.values() for s in m["classification"]})
    lines += ["### Patch-level linear segmentation (mIoU / pixel accuracy)", "",
              "| model | " + " | ".join(_s(s) for s in sensors) + " |", "|---" * (len(sensors) + 1) + "|"]
    for name, m in models.items():
        cells = [f"{m['segmentation'][s]['mIoU']:.3f} / {m['segmentation'][s]['pixel_acc']:.3f}"
                 if s in m["segmentation"] else "-" for s in sensors]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _label_budget_md(models: dict[str, Any]) -> list[str]:
    """One sensor's own tasks with a fraction of the training labels (``label_budget``)."""
    rows = {n: m["label_budget"] for n, m in models.items() if m.get("label_budget")}
    if not rows:
        return []
    fracs = list(next(iter(rows.values())))
    chips = next(iter(rows.values()))
    lines = ["", "### One sensor's own tasks with a fraction of the training labels (label_budget: class-fraction "
             "R2 / dominant-class balanced accuracy / segmentation mIoU)", "",
             "| model | " + " | ".join(f"{float(f):.0%} ({chips[f]['train_chips']} chips)" for f in fracs) + " |",
             "|---" * (len(fracs) + 1) + "|"]
    for name, lb in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{lb[f]['fractions_r2']:.3f} / {lb[f]['balanced_acc']:.3f} / {lb[f]['mIoU']:.3f}" for f in fracs) + " |")
    return lines


def _external_md(models: dict[str, Any]) -> list[str]:
    """External datasets."""
    lines: list[str] = []
    ext = {k for m in models.values() for k in m.get("external", {})}
    if ext:
        lines += ["", "### External datasets", ""]
        for name, m in models.items():
            for k, v in m.get("external", {}).items():
                lines.append(f"- {name} / {k}: " + "; ".join(
                    f"{frac}: " + ", ".join(f"{kk} {_f(vv)}" for kk, vv in r.items()) for frac, r in v.items()
                    if isinstance(r, dict)))
    return lines

def figures(report: dict[str, Any], figs: dict[str, Any], held: Any, names: dict[int, str], out: Path) -> list[Path]:
    """retrieval.png (R@k curves), transfer.png (heat maps), summary.png, segmentation.png (maps vs truth)."""
    import matplotlib

    matplotlib.use("Agg")
    paths = [_retrieval_figure(figs, out)] if figs["ranks"] else []
    return [*paths, _transfer_figure(report, out), _summary_figure(report, out),
            _segmentation_figure(report, figs, held, names, out)]


def _retrieval_figure(figs: dict[str, Any], out: Path) -> Path:
    """recall@k curves of every row, per ordered sensor pair."""
    import matplotlib.pyplot as plt

    pairs = sorted(figs["ranks"])
    cols = min(3, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, p in zip(axes.flat, pairs, strict=False):  # spare axes stay empty
        for name, ranks in figs["ranks"][p].items():
            ks = np.arange(1, min(50, len(ranks)) + 1)
            ax.plot(ks, [(ranks <= k).float().mean().item() for k in ks], label=name)
        n = len(next(iter(figs["ranks"][p].values())))
        ax.plot(ks, ks / n, "k--", lw=0.8, label="chance")
        a, b = p.split("->")
        ax.set_title(f"{_s(a)} -> {_s(b)} (mean-pooled tokens, {n} tiles)", fontsize=9)
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "retrieval.png", dpi=90)
    plt.close(fig)
    return out / "retrieval.png"


def _segmentation_figure(report: dict[str, Any], figs: dict[str, Any], held: Any, names: dict[int, str],
                         out: Path) -> Path:
    """The aerial view (or the first sensor), the truth and each row's prediction, for three tiles."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    # Segmentation maps: the aerial view (or the first sensor), the truth and each model's prediction.
    sensor = "aerial" if "aerial" in held.images else next(iter(held.images))
    from matplotlib.colors import to_rgb

    colors = report.get("class_colors", {})
    palette = [to_rgb(colors.get(str(report["classes"].get(names[i], 0)), UNLISTED_COLOR)) for i in range(len(names))]
    cmap = ListedColormap(palette or [(0.5, 0.5, 0.5)])
    picks = np.linspace(0, held.labels.shape[0] - 1, 3).astype(int)
    seg_models = [n for n in figs["seg"] if sensor in figs["seg"][n]]
    fig, axes = plt.subplots(len(picks), 2 + len(seg_models), figsize=(2.6 * (2 + len(seg_models)), 2.6 * len(picks)),
                             squeeze=False)
    for r, i in enumerate(picks):
        img = held.images[sensor][i].permute(1, 2, 0).numpy()
        # One stretch for all bands (keeps colours), by the median and spread of the tile, then a
        # gamma: bright markers and roofs no longer push the rest of the tile to black.
        med, spread = np.median(img), np.percentile(img, 95) - np.percentile(img, 5)
        axes[r][0].imshow(np.clip((img - med) / max(2 * spread, 1e-6) + 0.5, 0, 1) ** 0.8)
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
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=palette[i], label=names[i]) for i in range(len(names))], loc="lower center",
               ncol=min(6, len(names)), fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out / "segmentation.png", dpi=90)
    plt.close(fig)
    return out / "segmentation.png"


def _transfer_figure(report: dict[str, Any], out: Path) -> Path:
    """transfer.png: per model, balanced accuracy of a probe trained on one sensor, tested on each."""
    import matplotlib.pyplot as plt

    models = report["models"]
    cols = min(5, len(models))
    rows = (len(models) + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.1 * rows), squeeze=False)
    for ax, (name, m) in zip(grid.flat, models.items(), strict=False):  # spare axes stay empty
        ss = m["sensors"]
        mat = np.array([[m["transfer"][f"{a}->{b}"]["balanced_acc"] for b in ss] for a in ss])
        ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
        for i in range(len(ss)):
            for j in range(len(ss)):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(len(ss)), [_s(s) for s in ss])
        ax.set_yticks(range(len(ss)), [_s(s) for s in ss])
        ax.set_title(f"{name}: balanced accuracy\n(majority class {report['majority']['balanced_acc']:.2f})", fontsize=8)
        ax.set_xlabel("test sensor")
        ax.set_ylabel("probe trained on")
    for ax in list(grid.flat)[len(models):]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "transfer.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _summary_figure(report: dict[str, Any], out: Path) -> Path:
    """summary.png: mean cross-sensor R@1 per model and feature kind, and fraction-probe R2."""
    import matplotlib.pyplot as plt

    rows = summary_rows(report)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(rows))
    for i, k in enumerate(("cls", "mean", "dense")):
        axes[0].bar(x + (i - 1) * 0.27, [r[f"R@1 {k}"] or 0 for r in rows], 0.27, label=k)
    axes[0].axhline(report["chance_R@1"], color="k", ls="--", lw=0.8, label="chance")
    axes[0].set_xticks(x, [r["model"] for r in rows], fontsize=8, rotation=20, ha="right")
    axes[0].set_ylabel("held-out cross-sensor R@1 (mean over pairs)")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    for i, k in enumerate(("same", "cross")):
        vals = [r[f"fractions R2 {k}"] or 0 for r in rows]
        axes[1].bar(x + (i - 0.5) * 0.4, [max(v, -1.0) for v in vals], 0.4, label=f"{k}-sensor")
        for j, v in enumerate(vals):  # clipped at -1 so the interesting range stays readable
            if v < -1:
                axes[1].text(x[j] + (i - 0.5) * 0.4, -0.98, f"{v:.1f}", ha="center", va="bottom", fontsize=6,
                             rotation=90)
    axes[1].set_ylim(-1.05, 1.0)
    axes[1].axhline(0, color="k", lw=0.8, label="predicting the mean")
    axes[1].set_xticks(x, [r["model"] for r in rows], fontsize=8, rotation=20, ha="right")
    axes[1].set_ylabel("class-fraction probe, held-out R2")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = out / "summary.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["HEADLINE", "SUMMARY", "Claim", "SummaryRow", "claims", "claims_markdown", "figures", "group_rows",
           "interval95", "markdown", "split_view", "summary_row", "summary_rows"]
