"""Commands that train, evaluate and export models: pretrain, eval and export-model."""

from __future__ import annotations

from pathlib import Path

import click

from msc_france.cli.common import cli, quiet_mode, say
from msc_france.fsutil import output_dir

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
    layout (one patch embedding per sensor) and config.json (architecture and what the model eats:
    sensors, bands, normalisation, input size), read back by msc_france.xstars.export.load_encoder.
    """
    from msc_france.xstars.export import export_model as run_export

    for p in run_export(run, out, which):
        say(f"wrote {p}")
