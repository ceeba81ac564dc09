"""The typed run records: Checkpoint (the only way a checkpoint is read), StepRecord, TrainSummary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from msc_france.errors import TrainingError
from msc_france.xstars.checkpoint import CKPT_FORMAT, Checkpoint, build_backbone, load_checkpoint
from msc_france.xstars.config import TrainConfig
from msc_france.xstars.inputs import ModelInputs, ModelSpec, SensorInput
from msc_france.xstars.summary import StepRecord, TrainSummary
from msc_france.xstars.train import pretrain
from msc_france.xstars.vit import ViT
from tests.helpers import train_config as _cfg


def _checkpoint(**data: object) -> Checkpoint:
    torch.manual_seed(0)
    vit = ViT({"s2": 3, "aerial": 3}, "vit_test", 8, 32, drop_path=0.0)
    sd = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    rgb = ("red", "green", "blue")
    inputs = ModelInputs({"s2": SensorInput(rgb, (1.0, 2.0, 3.0), (1.0, 1.0, 1.0), 10.0),
                          "aerial": SensorInput(rgb, (90.0, 80.0, 70.0), (20.0, 20.0, 20.0), 1.5)},
                         32, ModelSpec("vit_test", 8, 32))
    cfg = TrainConfig.model_validate({"name": "t", "msad": {"alpha": 1.0}, "optim": {"steps": 40},
                                      "data": {"sensors": ["s2", "aerial"], **data}})
    return Checkpoint(step=7, config=cfg, inputs=inputs, student=sd, teacher=sd)


def test_a_checkpoint_survives_torch_save_and_weights_only_load(tmp_path: Path) -> None:
    c = _checkpoint()
    torch.save(c.to_dict(), tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # plain values only: torch's own safe loader
    assert raw["format"] == CKPT_FORMAT and raw["inputs"]["model"] == {
        "arch": "vit_test", "patch_size": 8, "img_size": 32, "patch_embed": "per-sensor"}
    back = load_checkpoint(tmp_path / "c.pt")
    assert (back.step, back.sensors, back.inputs, back.model) == (7, {"s2": 3, "aerial": 3}, c.inputs, c.model)
    assert back.config == c.config and back.config.msad.alpha == 1.0
    assert back.frozen is None
    vit = build_backbone(back)
    want = {k[len("backbone."):]: v for k, v in c.teacher.items()}
    assert all(torch.equal(vit.state_dict()[k], want[k]) for k in want)
    with pytest.raises(TrainingError, match="no frozen backbone"):
        build_backbone(back, frozen=True)


@pytest.mark.parametrize("drop", ["inputs", "teacher", "step"])
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


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(step=-3), "step -3 is outside its own run's 0..40"),
    (lambda d: d.update(step=10**9), "step 1000000000 is outside its own run's 0..40"),
    (lambda d: d["teacher"]["backbone.norm.weight"].__setitem__(0, float("nan")),
     "teacher backbone.norm.weight holds NaN or inf"),
    (lambda d: d["student"]["backbone.cls_token"].__setitem__((0, 0, 1), float("inf")),
     "student backbone.cls_token holds NaN or inf"),
    (lambda d: d["teacher"].__setitem__("backbone.pos_embed", torch.zeros(1, 17, 64, dtype=torch.int32)),
     "teacher backbone.pos_embed is int32, not floating point"),
    (lambda d: d["teacher"].__setitem__("backbone.pos_embed", torch.zeros(1, 1, 1).expand(1, 1 + 4096**2, 4096)),
     "teacher backbone.pos_embed declares"),
])
def test_a_shared_checkpoint_is_untrusted_input(tmp_path: Path, change, message: str) -> None:  # noqa: ANN001
    """Counters outside their run, non-finite or integer weights, a zero-stride tensor declaring
    billions of values in a small file: one-line errors naming the field or the tensor, before
    anything is allocated or trained.
    """
    c = _checkpoint()
    d = c.to_dict()
    d["teacher"] = {k: v.clone() for k, v in d["teacher"].items()}
    d["student"] = {k: v.clone() for k, v in d["student"].items()}
    change(d)
    torch.save(d, tmp_path / "c.pt")
    assert (tmp_path / "c.pt").stat().st_size < 2**20
    with pytest.raises(TrainingError, match=message) as e:
        load_checkpoint(tmp_path / "c.pt")
    assert "\n" not in str(e.value)


def test_export_model_never_opens_a_url_written_in_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A checkpoint whose data.store is a URL: the export goes on without the store, and the server
    it names receives nothing (no network access from any field of a model file).
    """
    from msc_france.cli import main
    from tests.servers import AssetServer

    with AssetServer(tmp_path) as victim:
        torch.save(_checkpoint(store=f"{victim.url}/store.zarr").to_dict(), tmp_path / "c.pt")
        assert main(["export-model", str(tmp_path / "c.pt"), "--out", str(tmp_path / "x")]) == 0
        assert victim.requests == []
    assert (tmp_path / "x" / "model.safetensors").is_file()


def _v1(c: Checkpoint) -> dict:
    """``c`` as format 1 stored it: model, sensors, bands and normalisation apart, no inputs."""
    d = c.to_dict()
    inputs = d.pop("inputs")
    return {**d, "format": "msc-france-xstars-1", "model": inputs["model"], "sensors": c.sensors,
            "bands": list(inputs["sensors"]["s2"]["bands"]),
            "normalization": {s: {"mean": v["mean"], "std": v["std"]} for s, v in inputs["sensors"].items()}}


def test_a_format_1_checkpoint_loads_through_one_migration_that_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    c = _checkpoint()
    torch.save(_v1(c), tmp_path / "old.pt")
    back = load_checkpoint(tmp_path / "old.pt")
    assert "format-1 checkpoint" in caplog.text and "rebuilt" in caplog.text
    assert back.inputs.sensors["aerial"].mean == (90.0, 80.0, 70.0) and back.inputs.sensors["s2"].bands == (
        "red", "green", "blue")
    assert back.inputs.input_size == 128  # the old config's data.size (its default), not the ViT's 32
    assert all(torch.equal(build_backbone(back).state_dict()[k], v) for k, v in build_backbone(c).state_dict().items())
    d = _v1(c)
    d["normalization"].pop("aerial")
    torch.save(d, tmp_path / "old2.pt")
    with pytest.raises(TrainingError, match="does not name its bands and statistics") as e:
        load_checkpoint(tmp_path / "old2.pt")
    assert "\n" not in str(e.value)


def test_a_checkpoint_whose_config_does_not_validate_is_one_line(tmp_path: Path) -> None:
    d = _checkpoint().to_dict()
    d["config"]["optim"]["steps"] = "many"
    torch.save(d, tmp_path / "c.pt")
    with pytest.raises(TrainingError, match="training config does not validate \\(optim.steps") as e:
        load_checkpoint(tmp_path / "c.pt")
    assert "\n" not in str(e.value)
