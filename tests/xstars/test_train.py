"""Pretraining on the tiny store: the loss goes down, resume is exact, continual keeps the frozen model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from msc_france.cli import main
from msc_france.errors import BadInputError, TrainingError
from msc_france.xstars.checkpoint import build_backbone, load_checkpoint
from msc_france.xstars.config import TrainConfig
from msc_france.xstars.train import pretrain
from tests.helpers import train_config as _cfg


@pytest.fixture(scope="module")
def trained(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "xstars"
    return out, pretrain(_cfg(tiny_store, out))


def test_loss_decreases(trained) -> None:
    """MSAD falls steadily; DINO first rises, then stays bounded near ln(out_dim).

    The centring spreads the initially collapsed teacher; ln(out_dim) is a uniform student's loss.
    On the version 5 tiny world DINO fell 0.3 below it in 40 steps; on version 6, whose textures
    and calendars make views of one tile differ more, it ends at 6.05 against ln(256) = 5.55.
    """
    out, s = trained
    assert len(s.losses) == 40 and all(torch.isfinite(torch.tensor(s.losses)))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    msad = [r["msad"] for r in rows]
    dino = [r["dino"] for r in rows]
    assert sum(msad[-5:]) / 5 < 0.8 * sum(msad[:5]) / 5
    assert max(dino[:3]) < math.log(256) < max(dino)  # the teacher spreads out from its collapse
    assert sum(dino[-5:]) / 5 < math.log(256) + 0.75  # and the student does not diverge from it


def test_run_directory(trained) -> None:
    out, _ = trained
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"ckpt-000010.pt", "ckpt-000020.pt",
                                                                 "ckpt-000030.pt", "ckpt-000040.pt", "last.pt"}
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(40))
    assert {r["dino_sensor"] for r in rows} == {"sentinel-2-l2a", "landsat-8-c2-l2", "aerial"}
    assert (out / "loss.png").stat().st_size > 5000 and (out / "config.yaml").exists()
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt.step == 40
    assert any(k.startswith("msad_heads.shared.") for k in ckpt.student)  # the (shared) heads are saved
    assert {"torch", "numpy", "python"} <= set(ckpt.rng)
    vit = build_backbone(ckpt)
    assert vit(torch.zeros(1, 3, 32, 32), "aerial").shape == (1, 17, 64)


def test_resume_reproduces_losses_exactly(trained, tiny_store: Path, tmp_path: Path) -> None:
    out, s = trained
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(out / ".msc-france-run", resumed)  # a copied run directory carries its marker
    shutil.copy(out / "checkpoints" / "ckpt-000020.pt", resumed / "checkpoints" / "last.pt")
    r = pretrain(_cfg(tiny_store, resumed))
    assert r.start == 20
    assert r.losses == s.losses[20:]  # bit-for-bit


def test_alpha_changes_the_update(tiny_store: Path, tmp_path: Path) -> None:
    a = pretrain(_cfg(tiny_store, tmp_path / "a", optim__steps=1, optim__warmup_steps=0, run__checkpoint_every=1))
    b = pretrain(_cfg(tiny_store, tmp_path / "b", optim__steps=1, optim__warmup_steps=0, run__checkpoint_every=1,
                      msad__alpha=0.0))
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt").student
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt").student
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa if k.startswith("backbone.blocks"))
    assert diff > 0
    assert a.losses[0] != b.losses[0]


def test_continual_keeps_the_frozen_model(trained, tiny_store: Path, tmp_path: Path) -> None:
    out, _ = trained
    src = out / "checkpoints" / "last.pt"
    cfg = _cfg(tiny_store, tmp_path / "cont", optim__steps=6, run__checkpoint_every=6)
    cfg = TrainConfig.model_validate({**cfg.model_dump(), "data": {**cfg.data.model_dump(),
                                      "sensors": ["sentinel-2-l2a", "aerial"]},
                                      "continual": {"checkpoint": str(src), "source_sensor": "sentinel-2-l2a",
                                                    "target_sensor": "aerial"}})
    before = build_backbone(load_checkpoint(src)).state_dict()
    pretrain(cfg)
    after = load_checkpoint(tmp_path / "cont" / "checkpoints" / "last.pt")
    frozen = after.frozen
    assert all(torch.equal(frozen[k], before[k]) for k in before)
    student = {k[len("backbone."):]: v for k, v in after.student.items() if k.startswith("backbone.")}
    assert any(not torch.equal(student[k], before[k]) for k in before if k in student)
    rows = [json.loads(line) for line in (tmp_path / "cont" / "log.jsonl").read_text().splitlines()]
    assert {r["dino_sensor"] for r in rows} == {"aerial"} and all(r["msad"] > 0 for r in rows)


def test_continual_architecture_mismatch(trained, tiny_store: Path, tmp_path: Path) -> None:
    out, _ = trained
    cfg = _cfg(tiny_store, tmp_path / "x", optim__steps=1)
    d = cfg.model_dump()
    d["model"]["arch"] = "vit_tiny"
    d["model"]["patch_size"] = 16
    d["dino"].update(global_size=32, local_size=16)
    d["msad"]["size"] = 32
    d["continual"] = {"checkpoint": str(out / "checkpoints" / "last.pt"), "source_sensor": "sentinel-2-l2a",
                      "target_sensor": "aerial"}
    with pytest.raises(TrainingError, match="is a vit_test/8, the config asks for vit_tiny/16"):
        pretrain(TrainConfig.model_validate(d))


def test_cli_errors(tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["pretrain", "--config", "pipelines/continual-xstars.yaml", "--data", str(tiny_store),
                 "--out", str(tmp_path / "c"), "--set", f"continual.checkpoint={tmp_path}/missing.pt"])
    err = capsys.readouterr().err
    assert code == BadInputError.exit_code and "checkpoint not found" in err and len(err.splitlines()) == 1
    code = main(["pretrain", "--config", "pipelines/pretrain-xstars.yaml", "--set", "optim.stepz=3"])
    err = capsys.readouterr().err
    assert code == 2 and "optim.stepz: unknown key" in err
    code = main(["pretrain", "--config", "pipelines/pretrain-xstars.yaml", "--set", "optim.steps=many"])
    assert code == 2 and "optim.steps" in capsys.readouterr().err


def test_run_directory_is_never_someone_elses(tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run refuses a folder of the user's files, a dataset store (or a folder inside one), and a
    run directory another trainer holds; nothing is written in any of them.
    """
    import yaml

    from msc_france.fsutil import exclusive_lock

    def run(out: Path) -> tuple[int, str]:
        cfg = _cfg(tiny_store, out, optim__steps=2, run__checkpoint_every=2).model_dump(mode="json")
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        code = main(["pretrain", "--config", str(tmp_path / "c.yaml"), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) <= 1, err
        return code, err[0] if err else ""

    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, line = run(mine)
    assert code == 2 and "holds files msc-france did not write (notes.txt)" in line
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    before = {p: p.stat().st_mtime_ns for p in tiny_store.rglob("*")}
    for out in (tiny_store, tiny_store / "runs" / "x"):
        code, line = run(out)
        assert code == 2 and "the Zarr store" in line and "nothing is written into a store" in line
    assert {p: p.stat().st_mtime_ns for p in tiny_store.rglob("*")} == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / ".msc-france-run").touch()  # what a trainer writes before it takes the lock
    with exclusive_lock(busy / ".run.lock", RuntimeError):
        code, line = run(busy)
    assert code == 2 and "is being trained by pid" in line
    assert not (busy / "checkpoints").exists()
    code, _ = run(busy)  # released: the same run directory trains
    assert code == 0 and (busy / "checkpoints" / "last.pt").exists() and (busy / ".msc-france-run").exists()


def _continual(cfg: TrainConfig, continual: dict) -> TrainConfig:
    return TrainConfig.model_validate({**cfg.model_dump(), "data": {**cfg.data.model_dump(),
                                       "sensors": ["sentinel-2-l2a", "aerial"]},
                                       "continual": {"source_sensor": "sentinel-2-l2a", "target_sensor": "aerial",
                                                     **continual}})


def test_continual_keeps_the_source_dino_head(trained, tiny_store: Path, tmp_path: Path) -> None:
    out, _ = trained
    src = load_checkpoint(out / "checkpoints" / "last.pt")
    head = {k: v for k, v in src.teacher.items() if k.startswith("dino_head.")}
    cfg = _continual(_cfg(tiny_store, tmp_path / "c", optim__steps=1, run__checkpoint_every=1),
                     {"checkpoint": str(out / "checkpoints" / "last.pt")})
    pretrain(cfg)
    after = load_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt").teacher
    for k, v in head.items():  # one small step from the source's head, not a fresh one
        assert (after[k] - v).norm() <= 0.05 * v.norm() + 1e-6, k


def test_continual_from_an_exported_timm_encoder(trained, tiny_store: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import load_file

    out, _ = trained
    assert main(["export-model", str(out), "--out", str(tmp_path / "enc")]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    exported = load_file(str(tmp_path / "enc" / "model.safetensors"))
    config = json.loads((tmp_path / "enc" / "config.json").read_text())
    inputs = config["inputs"]["sensors"]
    assert {s: v["gsd_m"] for s, v in inputs.items()} == {"sentinel-2-l2a": 10.0, "landsat-8-c2-l2": 30.0, "aerial": 1.5}
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert config["inputs"] == ckpt.inputs.to_json()  # the export says what the model eats, as the checkpoint does
    card = (tmp_path / "enc" / "README.md").read_text()
    # Title, provenance and licence from the sensor's YAML, through the store's group attributes.
    assert ("| Demo world: IGN BD ORTHO aerial imagery (RGB + NIR, stored at 1.5 m) | red, green, blue | 1.5 | "
            "the demo world's aerial camera (synthetic, msc-france) | same as msc-france (synthetic) |") in card
    assert "load_encoder" in card
    cfg = _continual(_cfg(tiny_store, tmp_path / "c", optim__steps=2, run__checkpoint_every=2),
                     {"init": {"format": "timm", "path": str(tmp_path / "enc" / "model.safetensors")}})
    pretrain(cfg)
    frozen = load_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt").frozen
    assert torch.equal(frozen["blocks.0.attn.qkv.weight"], exported["blocks.0.attn.qkv.weight"])
    assert torch.equal(frozen["blocks.1.mlp.0.weight"], exported["blocks.1.mlp.fc1.weight"])
    assert torch.equal(frozen["patch_embed.sentinel-2-l2a.weight"], exported["patch_embed.sentinel-2-l2a.proj.weight"])
    report = json.loads((tmp_path / "c" / "init-report.json").read_text())
    assert report["adapted"] == {} and report["loaded"] > 20
    # The aerial patch embeddings of the export are not used by a Sentinel-2 anchor: reported.
    assert "patch_embed.aerial.proj.weight" in report["unexpected"]


def test_continual_from_13_band_weights_of_another_size(tiny_store: Path, tmp_path: Path) -> None:
    """SSL4EO-S12-shaped weights (13 Sentinel-2 bands, trained on 56 px: 49 patches) feeding a
    Sentinel-2 anchor that sees red, green, blue at 32 px (16 patches).
    """
    from tests.xstars.test_weights import _timm_state

    sd = _timm_state(bands=13, tokens=49)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "ssl4eo.ckpt")
    cfg = _continual(_cfg(tiny_store, tmp_path / "c", optim__steps=2, run__checkpoint_every=2),
                     {"init": {"format": "timm", "path": str(tmp_path / "ssl4eo.ckpt"), "bands": "ssl4eo-s12"}})
    pretrain(cfg)
    frozen = load_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt").frozen
    # red = B04 (index 3), green = B03 (2), blue = B02 (1) of SSL4EO's order.
    assert torch.equal(frozen["patch_embed.sentinel-2-l2a.weight"], sd["patch_embed.proj.weight"][:, [3, 2, 1]])
    assert frozen["pos_embed"].shape == (1, 17, 64)
    report = json.loads((tmp_path / "c" / "init-report.json").read_text())
    assert set(report["adapted"]) == {"patch_embed.sentinel-2-l2a.proj.weight", "pos_embed"}
    assert report["unexpected"] == ["head.bias", "head.weight"]


def test_the_paper_preset_runs_two_steps_shrunk(tiny_store: Path, tmp_path: Path) -> None:
    """pipelines/pretrain-xstars-paper.yaml, its sizes shrunk by --set only (so it cannot rot): two
    steps on CPU, a checkpoint whose config keeps every value the overrides did not touch.
    """
    import yaml

    shrink = ["optim.steps=2", "optim.batch_size=4", "optim.warmup_steps=1", "data.size=32", "data.tiles=2",
              "data.num_workers=0",
              "data.order=shuffle", "model.arch=vit_test", "model.patch_size=8", "dino.global_size=32",
              "dino.local_size=16", "dino.local_crops=2", "dino.out_dim=256", "dino.hidden_dim=64",
              "dino.bottleneck_dim=32", "dino.freeze_last_layer_steps=1", "msad.size=32", "msad.proj_dim=32",
              "run.amp=off", "run.checkpoint_every=1"]
    code = main(["pretrain", "--config", "pipelines/pretrain-xstars-paper.yaml", "--data", str(tiny_store),
                 "--out", str(tmp_path / "paper"), "--quiet", *sum((["--set", s] for s in shrink), [])])
    assert code == 0
    log = [json.loads(line) for line in (tmp_path / "paper" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r] == [0, 1]
    preset = yaml.safe_load(Path("pipelines/pretrain-xstars-paper.yaml").read_text())
    used = yaml.safe_load((tmp_path / "paper" / "config.yaml").read_text())
    assert used["msad"]["alpha"] == preset["msad"]["alpha"] == 0.1
    assert used["dino"]["global_scale"] == [0.4, 1.0] and used["dino"]["local_scale"] == [0.05, 0.4]
    assert used["optim"]["lr"] == preset["optim"]["lr"] and used["optim"]["clip_grad"] == 3.0
