"""The store's root attributes and summaries as values (StoreMeta, StoreInfo), against what zarr
itself stores and what an independent reader (xarray) sees.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xarray as xr
import zarr

from msc_france.errors import StoreError
from msc_france.store import Store
from msc_france.store.meta import StoreMeta
from msc_france.store.validate import info


def test_root_attributes_round_trip_and_keep_unknown_keys(tiny_store: Path) -> None:
    raw = json.loads((tiny_store / "zarr.json").read_text())["attributes"]["msc_france"]
    meta = StoreMeta.from_json({**raw, "added_by_a_newer_version": {"x": 1}})
    assert meta.to_json() == {**raw, "added_by_a_newer_version": {"x": 1}}
    assert [L.group for L in meta.layers] == [d["group"] for d in raw["layers"]]
    assert meta.chip_size_m == raw["chip_size_m"] and meta.recipe_name == raw["recipe"]["name"]


@pytest.mark.parametrize("key", ["recipe", "layers", "chip_size_m"])
def test_a_store_missing_a_root_key_is_refused_in_one_line(tiny_store: Path, tmp_path: Path, key: str) -> None:
    import shutil

    st = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, st)
    g = zarr.open_group(str(st), mode="r+", zarr_format=3)
    attrs = dict(g.attrs["msc_france"])
    del attrs[key]
    g.attrs["msc_france"] = attrs
    with pytest.raises(StoreError, match=f"root attributes lack {key}") as e:
        Store.open(st)
    assert "\n" not in str(e.value)


def test_info_agrees_with_an_independent_reader(tiny_store: Path) -> None:
    s = info(Store.open(tiny_store))
    raw = zarr.open_group(str(tiny_store), mode="r", zarr_format=3)
    for group, L in s.layers.items():
        ds = xr.open_zarr(str(tiny_store), group=group, consolidated=False, zarr_format=3)
        status = ds["status"].values
        assert sum(L.status.values()) == len(status) == s.n_chips
        assert L.chip_pixels == raw[group]["valid"].shape[-1] == ds.sizes["x"]
        want = {code: int((status == code).sum()) for code in set(status.tolist())}
        assert sorted(L.status.values()) == sorted(want.values())
    assert sum(s.splits.values()) == s.n_chips
    j = s.to_json()
    assert json.loads(json.dumps(j)) == j and j["layers"][next(iter(s.layers))]["bands"] == list(
        next(iter(s.layers.values())).bands)
    assert s.line().startswith(f"{s.path}: format v{s.format_version}, recipe {s.recipe}, {s.n_chips} chips")
