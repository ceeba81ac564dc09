"""Commands that train and evaluate: pretrain and eval."""

from __future__ import annotations

from pathlib import Path

import click

from msc_france.cli.common import cli, quiet_mode, say
from msc_france.fsutil import claim_output_dir

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
    from msc_france.xstars.train import pretrain as run_pretrain

    cfg = load_train_config(config_path, list(overrides), **{"data.store": store, "run.out": out})
    s = run_pretrain(cfg, progress=not (quiet or quiet_mode()))
    first = f"{s['losses'][0]:.4f}" if s["losses"] else "-"
    lastv = f"{s['losses'][-1]:.4f}" if s["losses"] else "-"
    say(f"trained steps {s['start']}..{s['start'] + s['steps']} on {s['device']} in {s['elapsed_s']:.1f} s "
               f"({s['images_per_s']:.1f} images/s); loss {first} -> {lastv}; run in {s['out']}")


@cli.command("eval")
@click.option("--config", "config_path", default="eval", show_default=True, help="evaluation config")
@click.option("--checkpoint", default=None, help="evaluate this checkpoint (instead of the config's models)")
@click.option("--data", "store", default=None, help="store to evaluate on (overrides store)")
@click.option("--out", default=None, help="report directory (overrides out)")
def eval_cmd(config_path: str, checkpoint: str | None, store: str | None, out: str | None) -> None:
    """Evaluate frozen encoders (and baselines) and write report.json, report.md and figures."""
    from msc_france.eval.run import evaluate, load_eval_config

    cfg = load_eval_config(config_path, store=store, out=out, checkpoint=checkpoint)
    claim_output_dir(Path(cfg.out), "eval", lambda n: n.startswith(("report.", "retrieval", "segmentation",
                                                                     "transfer", "summary")) or n == "features")
    r = evaluate(cfg)
    click.echo((Path(cfg.out) / "report.md").read_text())
    say(f"report written to {cfg.out} (report.json, report.md, retrieval.png, transfer.png, "
               f"segmentation.png) in {r['elapsed_s']} s")
