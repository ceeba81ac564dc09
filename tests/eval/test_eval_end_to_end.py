"""An end-to-end evaluation of a tiny checkpoint on the tiny store, with external datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from msc_france.cli import main
from msc_france.eval.run import EvalConfig, evaluate
from msc_france.xstars.train import pretrain
from tests.eval.test_external import make_folder_dataset, make_segmentation
from tests.helpers import train_config as _cfg


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evalrun") / "xs"
    pretrain(_cfg(tiny_store, out, optim__steps=4, run__checkpoint_every=4))
    return out / "checkpoints" / "last.pt"


def test_report(tiny_store: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(
        store=str(tiny_store), input_size=32, tiles=2, test_splits=["val"], out=str(tmp_path / "eval"),
        models=[{"name": "xs", "checkpoint": str(tiny_ckpt), "ridge": True},
                {"name": "gone", "checkpoint": str(tmp_path / "missing.pt"), "optional": True}],
        external=[{"kind": "eurosat-rgb", "root": str(make_folder_dataset(tmp_path / "eurosat")),
                   "sensor": "sentinel-2-l2a", "size": 32, "fractions": [0.5, 1.0]},
                  {"kind": "geotiff-segmentation", "root": str(make_segmentation(tmp_path / "seg")),
                   "sensor": "aerial", "size": 32, "fractions": [1.0]}],
        supervised=["sentinel-2-l2a"], supervised_seeds=[0, 1], supervised_steps=20, bootstrap_draws=200,
    )
    r = evaluate(cfg)
    baselines = ["pixels", "thumb8-abs", "thumb4", "thumb8", "thumb16", "histogram", "random-shared",
                 "random-per-sensor", "random-conv", "random-conv+ridge"]
    sup = ["supervised-sentinel-2-l2a", "supervised-sentinel-2-l2a-seed1"]
    val = r["splits"]["val"]
    assert list(val["models"]) == [*baselines, "xs", "xs+ridge", *sup]
    assert r["roles"] == {**{b: "baseline" for b in [*baselines, *sup]}, "xs": "model", "xs+ridge": "model"}
    assert r["groups"]["supervised-sentinel-2-l2a-seed1"] == "supervised-sentinel-2-l2a"
    assert r["n_tiles"] == {"train": 12, "val": 4}
    # Chance from the counts: 4 queries against 4 tiles; shifted: 1 query per chip against 1 tile.
    absent = val["chance"].pop("classes_absent")
    assert val["chance"] == {"R@1": 0.25, "queries": 4, "gallery": 4, "R@1 shifted": 1.0, "shifted_queries": 1,
                             "shifted_gallery": 1}
    # The classes of the probes that the single val chip does not show, from its own labels.
    from msc_france.data import MSCFranceDataset

    ds = MSCFranceDataset(tiny_store, split="val", labels=True, sensors=["aerial"])
    shown = {ds.class_names[int(i)] for i in np.unique(ds[0]["mask"]) if i >= 0}
    assert absent == sorted(set(r["classes"]) - shown)
    assert 0 <= val["majority"]["acc"] <= 1
    # Every row's intervals, on the same blocks; a single run's full-sample value is the report's number.
    from msc_france.eval.report import split_view, summary_rows

    rows = {row.model: row for row in summary_rows(split_view(r, "val"))}
    for name in ("thumb8", "xs", "random-conv+ridge"):
        for metric, iv in val["intervals"][name].items():
            assert iv["low"] <= iv["value"] <= iv["high"] and iv["runs"] == 1
            assert iv["value"] == pytest.approx(rows[name][metric], rel=1e-6, abs=1e-9), (name, metric)
    assert val["intervals"]["supervised-sentinel-2-l2a"]["R@1 mean"]["runs"] == 2
    sensors = ["sentinel-2-l2a", "landsat-8-c2-l2", "aerial"]
    for name, m in val["models"].items():
        assert set(m["retrieval"]) == {"cls", "mean", "dense"}
        for kind in m["retrieval"].values():
            pairs = {k: v for k, v in kind.items() if "->" in k}
            assert len(pairs) == 6
            for v in pairs.values():
                assert 0 <= v["R@1"] <= v["R@5"] <= 1 and 1 <= v["median_rank"] <= 4 and v["n"] == 4
            assert kind["mean_R@1"] == pytest.approx(sum(v["R@1"] for v in pairs.values()) / 6)
        # One query tile per chip at tiles=2, against one shifted, turned gallery tile per chip.
        assert all(v["n"] == 1 for k in m["retrieval_shifted"].values() for p, v in k.items() if "->" in p)
        assert set(m["classification"]) == set(sensors)
        for c in m["classification"].values():
            assert all(0 <= c[k] <= 1 for k in ("knn_acc", "linear_acc", "linear_balanced_acc", "linear_macro_f1"))
        assert len(m["transfer"]) == 9 and all(0 <= t["balanced_acc"] <= 1 for t in m["transfer"].values())
        assert len(m["fractions_r2"]) == 9 and all(v <= 1 for v in m["fractions_r2"].values())
        assert all(0 <= s["mIoU"] <= 1 for s in m["segmentation"].values())
        assert all(set(s["transfer_mIoU"]) == set(sensors) - {k} for k, s in m["segmentation"].items())
        if name == "xs":
            d = m["diagnostics"]["msad_projection"]
            assert len(d) == 6 and all(0 <= v["R@1"] <= 1 for v in d.values())
            ext = r["external"]["xs"]
            assert set(ext["eurosat-rgb"]) == {"0.5", "1.0"} and 0 <= ext["eurosat-rgb"]["1.0"]["linear_acc"] <= 1
            assert ext["geotiff-segmentation"]["1.0"]["mIoU"] > 0.5  # two flat, well separated classes
    out = tmp_path / "eval"
    saved = json.loads((out / "report.json").read_text())
    assert saved["splits"]["val"]["models"].keys() == val["models"].keys()
    for f in ("report.md", "retrieval.png", "transfer.png", "segmentation.png", "summary.png"):
        assert (out / f).stat().st_size > 500
    md = (out / "report.md").read_text()
    assert "Cross-sensor retrieval, mean features" in md and "Class-fraction probe" in md and "majority class" in md
    assert "Against the strongest rival (val, 1 held-out blocks)" in md and "Retrieval that layout cannot solve" in md
    assert "4 queries, 4 gallery tiles" in md


def test_cli_checkpoint_and_errors(tiny_store: Path, tiny_ckpt: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    code = main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tiny_store)])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint not found" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code = main(["eval", "--checkpoint", str(bad), "--data", str(tiny_store)])
    err = capsys.readouterr().err
    assert code == 7 and "cannot read checkpoint" in err


def test_random_baselines_over_several_initialisations(tiny_store: Path, tmp_path: Path) -> None:
    from msc_france.eval.report import group_rows, split_view, summary_rows

    cfg = EvalConfig(store=str(tiny_store), input_size=32, tiles=2, test_splits=["val"], out=str(tmp_path / "e"),
                     baselines=["random-shared"], random_seeds=[0, 3, 7], shifted_gallery=False, supervised=[])
    r = evaluate(cfg)
    names = ["random-shared", "random-shared-seed3", "random-shared-seed7"]
    assert list(r["splits"]["val"]["models"]) == names
    assert r["groups"] == dict.fromkeys(names, "random-shared") and set(r["roles"].values()) == {"baseline"}
    view = split_view(r, "val")
    rows = {row["model"]: row for row in summary_rows(view)}
    assert len({rows[n]["fractions R2 cross"] for n in names}) == 3  # three different initialisations
    mean, hw, n = group_rows(view)["random-shared"]["fractions R2 cross"]
    v = np.array([rows[k]["fractions R2 cross"] for k in names])
    assert n == 3 and mean == pytest.approx(v.mean())
    assert hw == pytest.approx(4.302653 * v.std(ddof=1) / np.sqrt(3), rel=1e-5)  # Student t, 2 d.o.f.
    with pytest.raises(ValueError, match="repeats a seed"):
        EvalConfig(random_seeds=[1, 1])


def test_gallery_diagnostics_separate_the_shift_from_the_turn(tiny_store: Path, tmp_path: Path) -> None:
    """A colour histogram does not see the turn: its turned-only retrieval is its grid retrieval and
    its shifted-and-turned retrieval its shifted-only one, pair by pair; a 4 x 4 thumbnail does.
    """
    cfg = EvalConfig(store=str(tiny_store), input_size=32, tiles=2, test_splits=["val"], out=str(tmp_path / "g"),
                     baselines=["histogram", "thumb4"], gallery_diagnostics=True, supervised=[])
    r = evaluate(cfg)
    hist, thumb = (r["splits"]["val"]["models"][k] for k in ("histogram", "thumb4"))
    pairs = [p for p in hist["retrieval"]["mean"] if "->" in p]
    assert len(pairs) == 6
    for p in pairs:
        assert hist["retrieval_turn_only"]["mean"][p] == hist["retrieval"]["mean"][p]
        assert hist["retrieval_shifted"]["mean"][p] == hist["retrieval_shift_only"]["mean"][p]
        assert hist["retrieval_turn_only"]["mean"][p]["n"] == 4 and hist["retrieval_shift_only"]["mean"][p]["n"] == 1
    assert any(thumb["retrieval_turn_only"]["mean"][p] != thumb["retrieval"]["mean"][p] for p in pairs)
    md = (tmp_path / "g" / "report.md").read_text()
    assert "What defeats retrieval" in md and md.count("| histogram |") >= 2


def test_label_budget_probes_one_sensor_with_fewer_labels(tiny_store: Path, tmp_path: Path) -> None:
    """The continual claim's table: a sensor's own tasks with a fraction of the training chips'
    labels; the fractions keep whole chips, nested, the same for every row; all labels = the
    same-sensor class-fraction probe of the main table.
    """
    import torch

    from msc_france.eval.probes import label_subset

    # One sensor only, as a source model of one sensor is: scored on what it can be scored on, its
    # group without cross-sensor intervals (the claims skip it).
    cfg = EvalConfig(store=str(tiny_store), input_size=32, tiles=2, test_splits=["val"], out=str(tmp_path / "lb"),
                     sensors=["aerial"], baselines=["thumb8"], supervised=[], shifted_gallery=False,
                     label_budget={"sensor": "aerial", "fractions": [0.3, 1.0]})
    r = evaluate(cfg)
    assert r["splits"]["val"]["intervals"]["thumb8"] == {}
    lb = r["splits"]["val"]["models"]["thumb8"]["label_budget"]
    assert [lb[f]["train_chips"] for f in ("0.3", "1.0")] == [1, 3]
    full = r["splits"]["val"]["models"]["thumb8"]["fractions_r2"]["aerial->aerial"]
    assert lb["1.0"]["fractions_r2"] == pytest.approx(full, rel=1e-6)
    chips = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    small, big = label_subset(chips, 0.2, 0), label_subset(chips, 0.6, 0)
    assert small.sum() == 2 and big.sum() == 6 and bool((big | ~small).all())  # whole chips, nested
    assert "with a fraction of the training labels" in (tmp_path / "lb" / "report.md").read_text()
    with pytest.raises(ValueError, match="label fractions"):
        EvalConfig(label_budget={"fractions": [0.0]})
