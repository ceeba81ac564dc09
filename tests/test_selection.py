"""One chip selection for every reader: the dataset, index, card, preview and export keep the same
chips for the same selection, checked against pandas on the index itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from msc_france.cli import main
from msc_france.data import ChipSelection, MSCFranceDataset
from msc_france.errors import BadInputError
from msc_france.selection import select
from msc_france.store import Store


def test_select_matches_pandas_on_the_index(tiny_store: Path) -> None:
    idx = Store.open(str(tiny_store)).index()
    where = "valid_fraction_aerial > 0.5 and split != 'test'"
    sel = ChipSelection.of(["train", "val"], statuses=("ok",), where=where, groups=["aerial"])
    want = idx[idx["split"].isin(["train", "val"]) & (idx["status_aerial"] == "ok")
               & (idx["valid_fraction_aerial"] > 0.5) & (idx["split"] != "test")]
    got = select(idx, sel, str(tiny_store))
    assert list(got["chip_id"]) == list(want["chip_id"]) and len(got) >= 1
    ds = MSCFranceDataset(tiny_store, sel, sensors=["aerial"])
    assert ds.chip_ids == list(want["chip_id"])


def test_every_command_reads_the_same_selection(tiny_store: Path, tmp_path: Path) -> None:
    idx = Store.open(str(tiny_store)).index()
    train = sorted(idx.loc[idx["split"] == "train", "chip_id"])
    assert 1 <= len(train) < len(idx)
    assert main(["index", str(tiny_store), "--split", "train", "--out", str(tmp_path / "i.csv")]) == 0
    assert sorted(pd.read_csv(tmp_path / "i.csv")["chip_id"]) == train
    assert main(["card", str(tiny_store), "--split", "train", "--out", str(tmp_path / "card")]) == 0
    assert json.loads((tmp_path / "card" / "card.json").read_text())["n_chips"] == len(train)
    assert main(["export", str(tiny_store), "--format", "xstars-folders", "--split", "train", "--out",
                 str(tmp_path / "x")]) == 0
    assert sorted(p.stem for p in (tmp_path / "x" / "Sentinel").rglob("*.png")) == train
    assert main(["preview", str(tiny_store), "--where", "chip_id == 'nothing'", "--out", str(tmp_path / "p")]) == 2


def test_a_selection_refuses_what_it_cannot_mean(tiny_store: Path) -> None:
    with pytest.raises(BadInputError, match="unknown split 'tset'"):
        ChipSelection.of("tset")
    idx = Store.open(str(tiny_store)).index()
    with pytest.raises(BadInputError, match="the index has no column 'clouds'"):
        select(idx, ChipSelection.of(None, where="clouds < 3"), "s")
    with pytest.raises(BadInputError, match="has no chip"):
        select(idx, ChipSelection.of(None, chips=["E0_N0"]), "s")
