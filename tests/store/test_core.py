"""The store's core, its records, read path, lock and validator on a tiny store written directly
through the store API (no builder, no catalog): what each promises, checked by numpy, zarr and
rioxarray-free hand computations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from msc_france.config.recipe import RecipeRules
from msc_france.errors import StoreError
from msc_france.grid import Chip
from msc_france.splits import SplitRule
from msc_france.store import ChipReader, ChipRecord, Layer, LayerRecord, ShardCommit, Status, Store, StoreSchema
from msc_france.store.schema import chip_checksum
from msc_france.store.validate import validate

LAYER = Layer("s2", "sentinel-2-l2a", 10.0, ("red", "nir"), "uint16", False, 1e-4, 0.0, "reflectance")
SCHEMA = StoreSchema(chip_size_m=80, chips_per_shard=2, layers=(LAYER,), rules=RecipeRules({"name": "t"}))
CHIPS = [Chip(80, 8000 + i, 80000) for i in range(3)]  # 8 x 8 px chips, three of them: shards of 2 and 1
RULE = SplitRule((0.6, 0.2, 0.2), "salt")


def _chip(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    data = rng.integers(1, 10000, (2, 8, 8)).astype(np.uint16)
    valid = np.ones((8, 8), np.uint8)
    valid[:, : i + 1] = 0
    data[:, valid == 0] = 0
    return data, valid


def _record(i: int) -> LayerRecord:
    data, valid = _chip(i)
    stats = {"sum": data[:, valid > 0].sum(axis=1).tolist(), "sumsq": (data[:, valid > 0].astype(float) ** 2).sum(
        axis=1).tolist(), "count": int(valid.sum())}
    return LayerRecord(Status.OK, item_ids=(f"item-{i}",), datetime=1_623_664_000 + i, valid_fraction=valid.mean(),
                       cloud_fraction=0.0, checksum=chip_checksum(data, valid), stats=stats)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    """Three chips in two shards, written and committed through the store API, then consolidated."""
    st = Store.create_or_open(tmp_path / "s.zarr", SCHEMA)
    index_of = st.register(CHIPS, "tiny", RULE)
    assert index_of == {c.id: i for i, c in enumerate(CHIPS)}
    for shard, members in ((0, [0, 1]), (1, [2])):
        data = np.stack([_chip(i)[0] for i in members])
        valid = np.stack([_chip(i)[1] for i in members])
        st.write_shard("s2", shard, data, valid)
        st.write_commit(ShardCommit(shard, {CHIPS[i].id: ChipRecord(i, "test", {"s2": _record(i)}) for i in members}))
    summary = st.consolidate()
    assert summary.complete and summary.layers["s2"].count("ok") == 3
    return Store.open(tmp_path / "s.zarr")


def test_status_codes_are_the_stored_flag_values(store: Store) -> None:
    attrs = zarr.open_group(str(store.path / "s2"), mode="r")["status"].attrs
    assert attrs["flag_values"] == [s.code for s in Status] == [0, 1, 2, 3, 4, 5]
    assert attrs["flag_meanings"].split() == [s.value for s in Status]
    assert [s.value for s in Status if s.done] == ["ok", "flagged", "dropped", "nodata"]
    assert [s.value for s in Status if s.written] == ["ok", "flagged"]
    assert all(Status.from_code(s.code) is s for s in Status)


def test_records_round_trip_and_keep_the_done_mark_layout(store: Store) -> None:
    rec = _record(1).with_overview(2, "abc")
    assert LayerRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    raw = json.loads((store.path / "_commits" / "shard-000000.json").read_text())
    assert raw["version"] == 1 and raw["shard"] == 0
    chip = raw["chips"][CHIPS[1].id]
    assert chip["index"] == 1 and chip["worker"] == "test" and chip["sensors"]["s2"]["status"] == "ok"
    assert chip["sensors"]["s2"]["item_ids"] == ["item-1"]
    failed = LayerRecord.failed("boom").to_json()
    assert failed == {"status": "failed", "reason": "boom"}  # the layout stores have always had
    with pytest.raises(ValueError, match="newer"):
        ShardCommit.from_json({"version": 99, "shard": 0, "chips": {}})


def test_arrays_hold_what_was_written(store: Store) -> None:
    reader = ChipReader(store)
    for i in range(3):
        data, valid = _chip(i)
        g = zarr.open_group(str(store.path / "s2"), mode="r")
        got_d, got_v = g["image"][i], g["valid"][i]
        assert np.array_equal(got_d, data) and np.array_equal(got_v, valid)
        assert reader.status("s2", i) == Status.OK.code
    idx = store.index()
    assert list(idx["chip_id"]) == [c.id for c in CHIPS] and list(idx["status_s2"]) == ["ok"] * 3
    # Training statistics are the mean of the training chips' valid pixels, computed here by hand.
    train = [i for i, s in enumerate(idx["split"]) if s == "train"]
    assert train, "the salt no longer puts a chip in train"
    px = np.concatenate([_chip(i)[0][:, _chip(i)[1] > 0] for i in train], axis=1)
    stats = zarr.open_group(str(store.path / "s2"), mode="r").attrs["stats"]
    assert np.allclose(stats["mean"], px.mean(axis=1), atol=1e-3)


def test_write_shard_refuses_another_shape(store: Store) -> None:
    data, valid = _chip(0)
    with pytest.raises(ValueError, match="shard 0 of s2 holds"):
        Store.open(store.path, mode="r+").write_shard("s2", 0, data[None], valid[None])  # one chip, not two


def test_validate_checks_content_against_the_done_marks(store: Store) -> None:
    rep = validate(store)
    assert rep.ok and rep.checked_chips == 3
    # A done mark that disagrees with the bytes (as after silent damage) is corrupt, not ok.
    path = store.path / "_commits" / "shard-000001.json"
    raw = json.loads(path.read_text())
    raw["chips"][CHIPS[2].id]["sensors"]["s2"]["checksum"] = "0" * 64
    path.write_text(json.dumps(raw))
    rep = validate(Store.open(store.path))
    assert rep.corrupt == [f"s2: checksum mismatch for chip {CHIPS[2].id}"]
    # A chip without a done mark is pending: incomplete, and named by group.
    path.unlink()
    rep = validate(Store.open(store.path))
    assert "s2: 1 chip(s) not built (run build again to complete)" in rep.incomplete


def test_the_build_lock_admits_one_holder(store: Store) -> None:
    st = Store.open(store.path, mode="r+")
    with st.lock():
        with pytest.raises(StoreError, match="is being built by pid"):
            with Store.open(store.path, mode="r+").lock():
                pass
    with st.lock():  # released on exit
        pass


def test_the_chip_index_names_fields_by_group(store: Store) -> None:
    from msc_france.store.chip_index import field_column

    ci = store.chip_index()
    assert len(ci) == 3 and ci.groups == ["s2"]
    assert list(ci.status("s2")) == ["ok"] * 3 and ci.built(["s2"]).all()
    assert field_column("status", "sentinel-2-l2a") == "status_sentinel_2_l2a"
    assert [t.timestamp() for t in ci.datetime("s2")] == [1_623_664_000 + i for i in range(3)]
    assert not ci.has("shift_x_m", "s2")
    with pytest.raises(KeyError, match="unknown index field 'colour'"):
        field_column("colour", "s2")
