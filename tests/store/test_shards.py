"""The thin shard reader against zarr-python on every array of a built store, and its refusals."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from msc_france.errors import StoreError
from msc_france.store import ChipReader, Store
from msc_france.store.shards import ShardLayout


def _chip_arrays(root: zarr.Group) -> list[tuple[str, zarr.Array]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        members = list(root.members(max_depth=None))
    return [(p, a) for p, a in members if isinstance(a, zarr.Array) and a.shards is not None]


def test_every_chip_array_reads_as_zarr_reads_it(tiny_store: Path) -> None:
    root = zarr.open_group(str(tiny_store), mode="r")
    arrays = _chip_arrays(root)
    names = {p.rsplit("/", 1)[-1] for p, _ in arrays}
    assert {"image", "valid", "class"} <= names and any("overviews" in p for p, _ in arrays)
    for path, a in arrays:
        layout = ShardLayout.of(a, str(tiny_store / path))
        assert layout is not None, path
        want = np.asarray(a[:])
        got = layout.read(0, a.shape[0])
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=path)
        np.testing.assert_array_equal(layout.read(1, 3), want[1:3])  # a range across the 2-chip shards
        np.testing.assert_array_equal(layout.read(3, 99), want[3:])  # clipped at the end, as numpy slices


def test_missing_shard_reads_fill_and_damaged_index_is_refused(tiny_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, copy)
    a = zarr.open_array(str(copy / "sentinel-2-l2a" / "image"), mode="r")
    layout = ShardLayout.of(a, str(copy / "sentinel-2-l2a" / "image"))
    assert layout is not None
    Path(layout.path(1)).unlink()  # chips 2 and 3
    np.testing.assert_array_equal(layout.read(2, 4), np.asarray(a[2:4]))  # zarr's fill, both ways
    assert not layout.read(2, 4).any()
    with pytest.raises(StoreError, match="marked built but its shard file"):
        ChipReader(Store.open(copy)).read("sentinel-2-l2a", "image", 2)
    f = Path(layout.path(0))
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF  # inside the index: its CRC32C no longer matches
    f.write_bytes(bytes(data))
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        layout.read(0, 1)
    with pytest.raises(StoreError, match="cannot be read from sentinel-2-l2a/image/c/0"):
        ChipReader(Store.open(copy)).read("sentinel-2-l2a", "image", 0)


def test_other_layouts_go_through_zarr(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    plain = root.create_array("plain", shape=(4, 3, 3), chunks=(1, 3, 3), dtype="uint16")  # no shards
    blosc = root.create_array("blosc", shape=(4, 3, 3), chunks=(1, 3, 3), shards=(2, 3, 3), dtype="uint16",
                              compressors=zarr.codecs.BloscCodec())
    tiles = root.create_array("tiles", shape=(4, 4, 4), chunks=(1, 2, 2), shards=(2, 4, 4), dtype="uint8")
    for a in (plain, blosc, tiles):
        assert ShardLayout.of(a, str(tmp_path / "other.zarr" / a.path)) is None
