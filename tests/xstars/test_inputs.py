"""What a model eats travels with it: eval on another store normalises with the model's own
statistics, a store without a band the model eats is refused, and an export reads back into an
encoder whose features are the checkpoint's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from msc_france.cli import main
from msc_france.data import DatasetView, MSCFranceDataset
from msc_france.xstars.checkpoint import build_backbone, load_checkpoint
from msc_france.xstars.train import pretrain
from tests.helpers import train_config as _cfg

SENSORS = ["sentinel-2-l2a", "aerial"]


@pytest.fixture(scope="module")
def run(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inputs") / "run"
    cfg = _cfg(tiny_store, out, optim__steps=2, run__checkpoint_every=2)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"sensors": SENSORS})})
    pretrain(cfg)
    return out / "checkpoints" / "last.pt"


def _restated(store: Path, out: Path, scale: float) -> Path:
    """A copy of ``store`` whose statistics say other things (the same pixels)."""
    shutil.copytree(store, out)
    root = zarr.open_group(str(out), mode="r+")
    for s in SENSORS:
        st = dict(root[s].attrs["stats"])
        root[s].attrs["stats"] = {**st, "mean": [m * scale + 7 for m in st["mean"]],
                                  "std": [v * scale for v in st["std"]]}
    zarr.consolidate_metadata(str(out))
    return out


def test_a_model_on_another_store_is_fed_its_own_statistics(run: Path, tiny_store: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(run)
    other = _restated(tiny_store, tmp_path / "other.zarr", 3.0)
    raw = MSCFranceDataset(other, split=None, sensors=SENSORS, bands=["red", "green", "blue"], size=32,
                           normalize=False)
    fed = MSCFranceDataset(other, split=None, view=DatasetView(tuple(SENSORS), size=32, normalize=ckpt.inputs))
    store_own = MSCFranceDataset(other, split=None, sensors=SENSORS, bands=["red", "green", "blue"], size=32)
    vit = build_backbone(ckpt, "teacher").eval()
    for s in SENSORS:
        mean = np.asarray(ckpt.inputs.sensors[s].mean, np.float32)[:, None, None]
        std = np.asarray(ckpt.inputs.sensors[s].std, np.float32)[:, None, None]
        want = (raw[0][s]["image"].numpy() - mean) / std  # by hand, with the training chips' statistics
        np.testing.assert_allclose(fed[0][s]["image"].numpy(), want, rtol=1e-6, atol=1e-5)
        # ... not the evaluated store's, which would move the features of the same ground.
        assert not np.allclose(store_own[0][s]["image"].numpy(), want, atol=1e-2)
        with torch.no_grad():
            got = vit(fed[0][s]["image"][None], s)
            ref = vit(torch.from_numpy(want)[None], s)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_eval_refuses_a_store_without_a_band_the_model_eats(run: Path, tiny_store: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    ckpt = load_checkpoint(run)
    d = ckpt.to_dict()
    d["inputs"]["sensors"]["aerial"]["bands"] = ["red", "green", "swir16"]
    torch.save(d, tmp_path / "swir.pt")
    code = main(["eval", "--checkpoint", str(tmp_path / "swir.pt"), "--data", str(tiny_store), "--out",
                 str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "eats band(s) swir16 of 'aerial', which store" in err and "lacks" in err
    with pytest.raises(Exception, match="eats band"):
        MSCFranceDataset(tiny_store, split=None, view=DatasetView(tuple(SENSORS), normalize=load_checkpoint(
            tmp_path / "swir.pt").inputs))


def test_export_then_load_encoder_gives_the_checkpoints_features(run: Path, tiny_store: Path, tmp_path: Path) -> None:
    from msc_france.xstars.export import load_encoder

    assert main(["export-model", str(run), "--out", str(tmp_path / "enc")]) == 0
    enc = load_encoder(tmp_path / "enc")
    ckpt = load_checkpoint(run)
    assert enc.inputs == ckpt.inputs
    raw = MSCFranceDataset(tiny_store, split=None, sensors=SENSORS, bands=["red", "green", "blue"], size=32,
                           normalize=False)
    norm = MSCFranceDataset(tiny_store, split=None, view=DatasetView(tuple(SENSORS), size=32, normalize=ckpt.inputs))
    vit = build_backbone(ckpt, "teacher").eval()
    for s in SENSORS:
        with torch.no_grad():
            want = vit(norm[1][s]["image"][None], s)
        got = enc(raw[1][s]["image"][None], s)  # stored values in: the encoder normalises them itself
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_load_encoder_refuses_what_is_not_an_export(tmp_path: Path) -> None:
    from msc_france.errors import TrainingError
    from msc_france.xstars.export import load_encoder

    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(TrainingError, match="not an msc-france encoder export"):
        load_encoder(tmp_path)
