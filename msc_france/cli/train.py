"""Commands that train, evaluate and export models: pretrain, eval and export-model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from msc_france.cli.common import cli, quiet_mode, say
from msc_france.fsutil import output_dir, refuse_inside_store

if TYPE_CHECKING:
    from msc_france.xstars.checkpoint import Checkpoint

# --------------------------------------------------------------------------- training


@cli.command()
@click.option("--config", "config_path", required=True, help="pretraining config (pipelines/pretrain-*.yaml)")
@click.option("--data", "store", default=None, help="store to train on (overrides data.store)")
@click.option("--out", default=None, help="run directory (overrides run.out); an existing run is resumed")
@click.option("--set", "overrides", multiple=True, help="override a config value: key.sub=value (repeatable)")
@click.option("--quiet", is_flag=True, help="no per-step output")
def pretrain(config_path: str, store: str | None, out: str | None, overrides: tuple[str, ...], quiet: bool) -> None:
    """Pretrain an X-STARS (or DINO-only, or continual) model; resumes from the run's last checkpoint."""
    from msc_france.xstars.config import load_train_config
    from msc_france.xstars.summary import print_progress
    from msc_france.xstars.train import pretrain as run_pretrain

    cfg = load_train_config(config_path, list(overrides), **{"data.store": store, "run.out": out})
    s = run_pretrain(cfg, progress=None if quiet or quiet_mode() else print_progress)
    say(s.line())


@cli.command("eval")
@click.option("--config", "config_path", default="eval", show_default=True, help="evaluation config")
@click.option("--checkpoint", default=None, help="evaluate this checkpoint (instead of the config's models)")
@click.option("--data", "store", default=None, help="store to evaluate on (overrides store)")
@click.option("--out", default=None, help="report directory (overrides out)")
def eval_cmd(config_path: str, checkpoint: str | None, store: str | None, out: str | None) -> None:
    """Evaluate frozen encoders (and baselines) and write report.json, report.md and figures."""
    from msc_france.eval.run import evaluate, load_eval_config

    cfg = load_eval_config(config_path, store=store, out=out, checkpoint=checkpoint)
    with output_dir(Path(cfg.out), "eval"):
        r = evaluate(cfg)
    click.echo((Path(cfg.out) / "report.md").read_text())
    say(f"report written to {cfg.out} (report.json, report.md, retrieval.png, transfer.png, "
               f"segmentation.png) in {r['elapsed_s']} s")


@cli.command("export-model")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder for model.safetensors and "
              "config.json")
@click.option("--which", type=click.Choice(["teacher", "student"]), default="teacher", show_default=True,
              help="the network whose encoder is exported (DINO evaluates the teacher)")
def export_model(run: Path, out: Path, which: str) -> None:
    """Export a trained encoder for timm, torchgeo or plain torch: model.safetensors in timm's key
    layout (one patch embedding per sensor) and config.json (architecture, sensors, bands,
    normalisation).
    """
    from msc_france.xstars.checkpoint import build_backbone, load_checkpoint
    from msc_france.xstars.weights import export_encoder

    ckpt_path = run / "checkpoints" / "last.pt" if run.is_dir() else run
    ckpt = load_checkpoint(ckpt_path)
    vit = build_backbone(ckpt, which)
    refuse_inside_store(out, "export-model folder")  # cheap checks before the store is read
    bands = ckpt.bands
    store_path = ckpt.section("data").get("store")
    gsds: dict[str, float] = {}
    licences: dict[str, str] = {}
    try:  # the store the run trained on, when it is still there: GSDs and the data's licences
        from msc_france.card import SOURCES
        from msc_france.store import Store

        if store_path is None:
            raise FileNotFoundError("no data.store in the checkpoint's config")
        if "://" in str(store_path) or not Path(str(store_path)).is_dir():
            # A model file is untrusted input: a URL written in it is never opened (no network from
            # any field of a model file), only a store folder on this machine.
            raise FileNotFoundError("the checkpoint's store is not a local folder")
        st = Store.open(str(store_path))
        gsds = {s: st.layer(s).gsd for s in ckpt.sensors}
        licences = {s: SOURCES.get(st.layer(s).sensor, ("", "see the source"))[1] for s in ckpt.sensors}
    except Exception:  # noqa: BLE001 (moved or remote: the export goes on without them, and says so)
        gsds = {}
    meta = {"sensors": {s: list(bands) if bands else int(c) for s, c in ckpt.sensors.items()},
            "gsd_m": gsds or "unknown (the training store was not found)",
            "normalization": ckpt.normalization, "source": {"checkpoint": str(ckpt_path), "step": ckpt.step,
                                                            "network": which},
            "load_with": "msc_france.xstars.weights.import_vit(path, 'timm', sensors, arch, patch_size, img_size)"}
    card = _model_card(run, ckpt, which, gsds, licences)
    with output_dir(out, "export-model"):
        written = export_encoder(vit, out, meta, card)
    for p in written:
        say(f"wrote {p}")


def _model_card(run: Path, ckpt: Checkpoint, which: str, gsds: dict[str, float], licences: dict[str, str]) -> str:
    """README.md of an exported encoder: what it is, what it saw, how it scored, how to load it."""
    import json as _json

    m, data = ckpt.model, ckpt.section("data")
    lines = [f"# {ckpt.config.get('name', 'msc-france')} encoder ({m.arch}/{m.patch_size}, {which})", "",
             f"Trained with msc-france for {ckpt.step} steps on `{data.get('store')}` "
             f"(split `{data.get('split')}`), input {m.img_size} px.", "",
             "| sensor | bands | GSD (m) | data licence |", "|---|---|---|---|"]
    for s in ckpt.sensors:
        lines.append(f"| {s} | {', '.join(ckpt.bands or [])} | {gsds.get(s, '?')} | {licences.get(s, '?')} |")
    lines += ["", "Evaluation: `msc-france eval --checkpoint` on the run's checkpoint scores it against the "
              "learning-free baselines (docs/results.md); the numbers are not copied here."]
    lines += ["", "Normalisation (per sensor, stored units):", "", "```json",
              _json.dumps(ckpt.normalization, indent=1), "```", "",
              "## Loading", "", "```python", "import torch",
              "from safetensors.torch import load_file", "",
              "sd = load_file('model.safetensors')  # timm key layout; one patch_embed.<sensor>.proj per sensor",
              f"sensor = '{next(iter(ckpt.sensors))}'",
              "timm_sd = {k: v for k, v in sd.items() if not k.startswith('patch_embed.')}",
              "timm_sd['patch_embed.proj.weight'] = sd[f'patch_embed.{sensor}.proj.weight']",
              "timm_sd['patch_embed.proj.bias'] = sd[f'patch_embed.{sensor}.proj.bias']",
              "# with timm installed: model = timm.create_model('vit_tiny_patch16_224', img_size=..., in_chans=...,",
              "#     num_classes=0); model.load_state_dict(timm_sd)", "```", ""]
    return "\n".join(lines)
