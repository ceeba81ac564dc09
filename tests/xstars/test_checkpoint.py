"""The typed run records: Checkpoint (the only way a checkpoint is read), StepRecord, TrainSummary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from msc_france.errors import TrainingError
from msc_france.xstars.checkpoint import CKPT_FORMAT, Checkpoint, ModelSpec, build_backbone, load_checkpoint
from msc_france.xstars.summary import StepRecord, TrainSummary
from msc_france.xstars.train import pretrain
from msc_france.xstars.vit import ViT
from tests.helpers import train_config as _cfg


def _checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    vit = ViT({"s2": 3, "aerial": 3}, "vit_test", 8, 32, drop_path=0.0)
    sd = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    return Checkpoint(step=7, config={"msad": {"alpha": 1.0}}, model=ModelSpec("vit_test", 8, 32),
                      sensors={"s2": 3, "aerial": 3}, student=sd, teacher=sd, bands=["red", "green", "blue"],
                      normalization={"s2": {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}})


def test_a_checkpoint_survives_torch_save_and_weights_only_load(tmp_path: Path) -> None:
    c = _checkpoint()
    torch.save(c.to_dict(), tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # plain values only: torch's own safe loader
    assert raw["format"] == CKPT_FORMAT and raw["model"] == {"arch": "vit_test", "patch_size": 8, "img_size": 32,
                                                             "patch_embed": "per-sensor"}
    back = load_checkpoint(tmp_path / "c.pt")
    assert (back.step, back.sensors, back.bands, back.model) == (7, c.sensors, c.bands, c.model)
    assert back.section("msad") == {"alpha": 1.0} and back.section("data") == {}
    assert back.frozen is None
    vit = build_backbone(back)
    want = {k[len("backbone."):]: v for k, v in c.teacher.items()}
    assert all(torch.equal(vit.state_dict()[k], want[k]) for k in want)
    with pytest.raises(TrainingError, match="no frozen backbone"):
        build_backbone(back, frozen=True)


@pytest.mark.parametrize("drop", ["model", "sensors", "teacher", "step"])
def test_a_checkpoint_missing_an_entry_is_a_one_line_error(tmp_path: Path, drop: str) -> None:
    d = _checkpoint().to_dict()
    del d[drop]
    with pytest.raises(TrainingError, match="does not describe its own weights") as e:
        Checkpoint.from_dict(d, "x.pt")
    assert "\n" not in str(e.value) and drop in str(e.value)
    with pytest.raises(TrainingError, match="not an msc-france"):
        Checkpoint.from_dict({**d, "format": "other"}, "x.pt")


def test_the_log_and_the_summary_are_typed_records(tiny_store: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    s = pretrain(_cfg(tiny_store, tmp_path / "r", optim__steps=3, run__checkpoint_every=3),
                 progress=lambda rec, total: seen.append((rec.step, total)))
    assert isinstance(s, TrainSummary) and seen == [(0, 3), (1, 3), (2, 3)]
    lines = (tmp_path / "r" / "log.jsonl").read_text().splitlines()
    recs = [StepRecord.from_json(json.loads(x)) for x in lines]
    assert [r.loss for r in recs] == s.losses and (s.start, s.steps) == (0, 3)
    assert s.line().startswith("trained steps 0..3 on cpu") and f"{s.losses[-1]:.4f}" in s.line()
    assert s.to_json()["out"] == str(tmp_path / "r")
