"""MSCFranceDataset, collation, samplers and co-located crops."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from msc_france.data import MSCFranceDataset, SensorBalancedSampler, StepBatchSampler, collate
from msc_france.data.transforms import MultiCropConfig, colocated_crops, multicrop, random_window
from msc_france.errors import BadInputError


def test_sample_contract(tiny_store: Path) -> None:
    ds = MSCFranceDataset(tiny_store, split=None, labels=True)
    assert len(ds) == 4 and ds.sensors == ["aerial", "landsat-8-c2-l2", "sentinel-2-l2a"]
    s = ds[0]
    assert s["crs"].to_epsg() == 2154 and s["chip_id"] == ds.chip_ids[0]
    b = s["bounds"]
    assert b.maxx - b.minx == 960 and b.maxy - b.miny == 960 and b.mint <= b.maxt
    # Time bounds: the earliest and latest acquisition among the sensors, from the index (pandas).
    idx = gpd.read_parquet(tiny_store / "index.parquet").set_index("chip_id")
    times = [idx.loc[s["chip_id"], f"datetime_{g.replace('-', '_')}"].timestamp() for g in ds.sensors]
    assert (b.mint, b.maxt) == (min(times), max(times))
    assert s["sentinel-2-l2a"]["image"].shape == (4, 96, 96) and s["sentinel-2-l2a"]["image"].dtype == torch.float32
    assert s["landsat-8-c2-l2"]["image"].shape == (4, 32, 32)
    assert s["aerial"]["image"].shape == (4, 640, 640)
    assert s["aerial"]["valid"].dtype == torch.bool and s["aerial"]["valid"].shape == (640, 640)
    assert "mask" not in s["aerial"]
    assert s["mask"].shape == (96, 96) and s["mask"].dtype == torch.int64


def test_mask_holds_contiguous_class_indices(tiny_store: Path) -> None:
    """``mask`` maps the stored WorldCover codes through the store's own mapping; checked against
    the raw codes read with zarr and a mapping built here from the class list."""
    root = zarr.open_group(str(tiny_store), mode="r")
    classes = root["labels"].attrs["classes"]
    want_index = {int(c): i for i, c in enumerate(sorted(int(k) for k in classes))}
    assert {int(k): v for k, v in root["labels"].attrs["class_index"].items()} == want_index
    ds = MSCFranceDataset(tiny_store, split=None, labels=True)
    assert ds.class_names == {i: classes[str(c)] for c, i in want_index.items()}
    for i in range(len(ds)):
        codes = root["labels"]["class"][ds.chip_index[i]].astype(np.int64)
        want = np.vectorize(lambda c: want_index.get(int(c), -100))(codes)
        np.testing.assert_array_equal(ds[i]["mask"].numpy(), want)
    # Cross-entropy ignores the unlabelled pixels by default.
    m = ds[0]["mask"]
    logits = torch.zeros(1, len(classes), *m.shape)
    assert torch.isfinite(torch.nn.functional.cross_entropy(logits, m[None]))


def test_collate_follows_stack_samples(tiny_store: Path) -> None:
    ds = MSCFranceDataset(tiny_store, split=None, labels=True, size=32)
    batch = collate([ds[i] for i in range(3)])
    assert batch["sentinel-2-l2a"]["image"].shape == (3, 4, 32, 32) and batch["mask"].shape == (3, 32, 32)
    assert [b.minx for b in batch["bounds"]] == [ds[i]["bounds"].minx for i in range(3)]
    assert len(batch["crs"]) == 3 and batch["chip_id"] == ds.chip_ids[:3]


def _worker_batches(ds: MSCFranceDataset, n: int) -> list[dict]:
    from torch.utils.data import DataLoader

    loader = DataLoader(torch.utils.data.Subset(ds, range(n)), batch_size=2, num_workers=1, collate_fn=collate)
    return list(loader)


def test_a_worker_batch_is_one_shared_buffer_equal_to_torch_stack(tiny_store: Path) -> None:
    """In a DataLoader worker, collate writes every tensor into one shared-memory buffer; the values,
    dtypes and shapes are those of plain ``torch.stack`` of the same samples in this process.
    """
    ds = MSCFranceDataset(tiny_store, split=None, labels=True, size=32, tiles=2)
    got = _worker_batches(ds, 4)
    assert len(got) == 2
    for j, b in enumerate(got):
        samples = [ds[i] for i in range(2 * j, 2 * j + 2)]
        tensors = [b[s][f] for s in ds.sensors for f in ("image", "valid")] + [b["mask"]]
        want = [torch.stack([x[s][f] for x in samples]) for s in ds.sensors for f in ("image", "valid")]
        want.append(torch.stack([x["mask"] for x in samples]))
        for t, w in zip(tensors, want, strict=True):
            assert t.dtype == w.dtype and t.shape == w.shape and torch.equal(t, w)
        assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1  # one buffer for the batch
        assert torch.equal(b["tile"], torch.tensor([x["tile"] for x in samples]))
    plain = collate([ds[0], ds[1]])  # outside a worker: separate tensors, as torch.stack makes them
    assert plain["mask"].untyped_storage().data_ptr() != plain["aerial"]["image"].untyped_storage().data_ptr()


def test_normalisation_uses_store_statistics(tiny_store: Path) -> None:
    # The statistics are the training chips' (held-out pixels never shape the normalisation).
    ds = MSCFranceDataset(tiny_store, split="train", sensors=["sentinel-2-l2a"])
    raw = MSCFranceDataset(tiny_store, split="train", sensors=["sentinel-2-l2a"], normalize=False)
    vals, rvals = [], []
    for i in range(len(ds)):
        m = ds[i]["sentinel-2-l2a"]["valid"]
        vals.append(ds[i]["sentinel-2-l2a"]["image"][:, m])
        rvals.append(raw[i]["sentinel-2-l2a"]["image"][:, m])
    v, r = torch.cat(vals, dim=1), torch.cat(rvals, dim=1)
    assert torch.allclose(v.mean(dim=1), torch.zeros(4), atol=0.05)
    assert torch.allclose(v.std(dim=1), torch.ones(4), atol=0.05)
    assert r.min() >= 1 and r.max() > 1000  # raw values are reflectance x 10000


def test_bands_size_and_errors(tiny_store: Path) -> None:
    ds = MSCFranceDataset(tiny_store, split=None, bands=["red", "green", "blue"], size=48)
    s = ds[1]
    assert all(s[k]["image"].shape == (3, 48, 48) for k in ds.sensors)
    with pytest.raises(BadInputError, match="no band"):
        MSCFranceDataset(tiny_store, bands=["swir"])
    with pytest.raises(BadInputError, match="no sensor 'modis'"):
        MSCFranceDataset(tiny_store, sensors=["modis"])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_give_the_same_samples(tiny_store: Path, context: str) -> None:
    ds = MSCFranceDataset(tiny_store, split=None, size=32)
    ref = collate([ds[i] for i in range(4)])
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate, multiprocessing_context=context)
    batches = list(loader)
    got = torch.cat([b["sentinel-2-l2a"]["image"] for b in batches])
    assert torch.equal(got, ref["sentinel-2-l2a"]["image"])
    assert sum((b["chip_id"] for b in batches), []) == ref["chip_id"]


def test_step_batch_sampler_is_a_function_of_the_step() -> None:
    s = StepBatchSampler(10, 4, seed=3, steps=6)
    batches = list(s)
    assert len(batches) == 6 and all(len(b) == 4 for b in batches)
    assert batches[:2] == [s.batch(0), s.batch(1)]
    assert list(StepBatchSampler(10, 4, seed=3, start_step=4, steps=6)) == batches[4:]
    ranks = [StepBatchSampler(10, 4, 3, rank=r, world_size=2).batch(5) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(s.batch(5))


def test_sensor_balanced_sampler() -> None:
    s = SensorBalancedSampler({"s2": [0, 1, 2, 3, 4, 5, 6, 7], "aerial": [1, 2]}, num_samples=4000, seed=1)
    pairs = list(s)
    counts = {k: sum(1 for _, x in pairs if x == k) for k in ("s2", "aerial")}
    assert abs(counts["s2"] - counts["aerial"]) < 300
    assert {i for i, x in pairs if x == "aerial"} == {1, 2}


def test_single_sensor_keys(tiny_store: Path) -> None:
    ds = MSCFranceDataset(tiny_store, split=None)
    s = ds[(2, "aerial")]
    assert s["sensor"] == "aerial" and "sentinel-2-l2a" not in s and "aerial" in s


def test_colocated_crops_are_colocated(tiny_store: Path, tiny_world: Path) -> None:
    """Crop a window around a calibration marker from every sensor: it lands at the same place."""
    truth = json.loads((tiny_world / "truth.json").read_text())
    ds = MSCFranceDataset(tiny_store, split=None, normalize=False)
    for i in range(len(ds)):
        x0, x1, y0, y1 = ds[i]["bounds"][:4]
        inside = [(mx, my) for mx, my in truth["markers_l93"] if x0 + 200 < mx < x1 - 200 and y0 + 200 < my < y1 - 200]
        if inside:
            break
    mx, my = inside[0]
    fx, fy = (mx - x0) / 960, (y1 - my) / 960
    window = (round((fx - 0.2) * 32) / 32, round((fy - 0.2) * 32) / 32, 0.4375, 0.4375)
    sample = ds[i]
    crops = colocated_crops({s: sample[s]["image"] for s in ds.sensors}, window, 56)
    centres = []
    for s, img in crops.items():
        band = img[2 if s != "aerial" else 0].numpy()
        w = np.clip(band - np.median(band), 0, None)
        w = np.where(w > 0.5 * w.max(), w, 0)
        rows, cols = np.indices(band.shape)
        centres.append(((w * rows).sum() / w.sum(), (w * cols).sum() / w.sum()))
    centres = np.array(centres)
    assert np.abs(centres - centres.mean(axis=0)).max() < 56 * 15 / (0.4375 * 960) + 0.5  # < half a Landsat pixel


def test_random_windows_snap_to_the_coarse_lattice() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        x0, y0, w, h = random_window(32, (0.2, 1.0), g)
        for v in (x0, y0, w, h):
            assert abs(v * 32 - round(v * 32)) < 1e-9
        assert 0 <= x0 and x0 + w <= 1 + 1e-9 and 0 <= y0 and y0 + h <= 1 + 1e-9


def test_multicrop_shapes_and_determinism() -> None:
    x = torch.randn(3, 4, 64, 64)
    cfg = MultiCropConfig(global_crops=2, local_crops=3, global_size=32, local_size=16)
    a = multicrop(x, cfg, torch.Generator().manual_seed(5))
    b = multicrop(x, cfg, torch.Generator().manual_seed(5))
    assert [v.shape for v in a] == [(3, 4, 32, 32)] * 2 + [(3, 4, 16, 16)] * 3
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    c = multicrop(x, cfg, torch.Generator().manual_seed(6))
    assert not torch.equal(a[0], c[0])


def test_dihedral_views_turn_the_image() -> None:
    from msc_france.data.transforms import photometric

    def z(t: torch.Tensor) -> torch.Tensor:  # per band: undoes brightness, contrast and band jitter
        return (t - t.mean(dim=(1, 2), keepdim=True)) / t.std(dim=(1, 2), keepdim=True)

    x = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1))
    turns = [z(torch.rot90(x, k, dims=(-2, -1)).flip(-1) if f else torch.rot90(x, k, dims=(-2, -1)))
             for k in range(4) for f in (0, 1)]
    seen, plain = set(), set()
    for seed in range(80):  # blur and solarisation off: geometry and colour jitter only
        for dihedral, found in ((True, seen), (False, plain)):
            v = z(photometric(x, torch.Generator().manual_seed(seed), 0.0, 0.0, dihedral=dihedral))
            found.update(i for i, t in enumerate(turns) if torch.allclose(v, t, atol=1e-4))
    assert seen == set(range(8))  # every symmetry of the square occurs
    assert plain == {0, 1}  # without it: the image or its mirror only


def test_tiles_are_co_located_sub_chips(tiny_store: Path) -> None:
    full = MSCFranceDataset(tiny_store, split=None)
    tiled = MSCFranceDataset(tiny_store, split=None, tiles=2)
    assert len(tiled) == 4 * len(full)
    s = tiled[5]  # chip 1, tile (0, 1)
    chip = full[1]
    assert s["chip_id"] == chip["chip_id"] and s["tile"] == (0, 1)
    x0, x1, y0, y1 = chip["bounds"][:4]
    assert s["bounds"][:4] == (x0 + 480, x1, y1 - 480, y1)
    for name, n in (("sentinel-2-l2a", 48), ("landsat-8-c2-l2", 16), ("aerial", 320)):
        assert torch.equal(s[name]["image"], chip[name]["image"][:, :n, n:])
    with pytest.raises(BadInputError, match="not divisible"):
        MSCFranceDataset(tiny_store, split=None, tiles=3)
    sampler = SensorBalancedSampler.from_dataset(tiled, num_samples=50)
    assert all(0 <= i < len(tiled) for i, _ in sampler)


@pytest.mark.parametrize(("size", "array", "factor"), [(40, "overviews/5/image", 5), (200, "image", 1)])
def test_resized_samples_match_an_independent_resize(tiny_store: Path, size: int, array: str, factor: int) -> None:
    """size= resizes the stored chip (antialiased bilinear) of the coarsest level with enough pixels
    (the 128 px overview for 40 px, full resolution for 200 px) and standardises it with the
    store's statistics: recomputed here from the zarr array and its group attributes."""
    ds = MSCFranceDataset(tiny_store, split=None, sensors=["aerial"], size=size)
    assert ds.levels == {"aerial": factor}
    g = zarr.open_group(str(tiny_store), mode="r")["aerial"]
    stats = g.attrs["stats"]
    raw = torch.from_numpy(g[array][ds.chip_index[0]].astype(np.float32))
    want = torch.nn.functional.interpolate(raw[None], size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)[0]
    want = (want - torch.tensor(stats["mean"])[:, None, None]) / torch.tensor(stats["std"])[:, None, None]
    assert torch.allclose(ds[0]["aerial"]["image"], want, atol=1e-4)


def test_a_store_filtered_by_an_index_expression_or_chip_ids(tiny_store: Path) -> None:
    """``where`` keeps the chips geopandas selects with the same comparison on the index; ``chips``
    keeps the listed ids; bad filters are one-line errors and never run code.
    """
    import geopandas as gpd

    from msc_france.errors import BadInputError

    idx = gpd.read_parquet(tiny_store / "index.parquet")
    ok = (idx["status_sentinel_2_l2a"] == "ok").to_numpy()
    cut = float(np.nanmedian(idx["valid_fraction_sentinel_2_l2a"]))
    want = idx.loc[ok & (idx["valid_fraction_sentinel_2_l2a"] >= cut).to_numpy(), "chip_id"].tolist()
    ds = MSCFranceDataset(tiny_store, sensors=["sentinel-2-l2a"], split=None,
                          where=f"valid_fraction_sentinel_2_l2a >= {cut}")
    assert ds.chip_ids == want and 0 < len(want) < ok.sum() + 1
    two = idx.loc[ok, "chip_id"].tolist()[:2]
    assert MSCFranceDataset(tiny_store, sensors=["sentinel-2-l2a"], split=None, chips=two).chip_ids == two
    for bad, match in (("valid_fraction_nope > 1", "chip filter"), ("valid_fraction_sentinel_2_l2a +", "chip filter"),
                       ("valid_fraction_sentinel_2_l2a * 2", "not true or false"),
                       ("__import__('os').system('touch /tmp/pwned')", "only abs"),
                       ("valid_fraction_sentinel_2_l2a.to_csv('/tmp/pwned')", "only abs"),
                       ("valid_fraction_sentinel_2_l2a.values > 0", "Attribute is not allowed"),
                       ("@valid_fraction_sentinel_2_l2a", "does not parse"),
                       ("chip_id[0] == 'x'", "Subscript is not allowed")):
        with pytest.raises(BadInputError, match=match) as e:
            MSCFranceDataset(tiny_store, sensors=["sentinel-2-l2a"], split=None, where=bad)
        assert "\n" not in str(e.value)
    with pytest.raises(BadInputError, match="has no chip"):
        MSCFranceDataset(tiny_store, sensors=["sentinel-2-l2a"], split=None, chips=["nope"])


@pytest.mark.timeout(120)
def test_filters_that_would_compute_without_bound_are_refused_in_a_bounded_child(tiny_store: Path) -> None:
    """Filters whose constant folding would allocate gigabytes or never end are refused before pandas
    sees them; measured in a child process with a 2 GB address-space cap and a 60 s limit, so a
    regression fails here instead of taking the machine down. Plain arithmetic still works.
    """
    import subprocess
    import sys
    import textwrap

    cases = ["split == 'x' * 10**9", "chip_index < 9**9**9", "chip_index < (2**16)**16**16",
             "chip_index < ((2**16)**16)**16", "split == 'ab' + 'c'", "chip_index < 10**99999",
             f"chip_index < {2**70}", "chip_index ** (1 + 1) < 4", "'x' % 3 == split"]
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
        from msc_france.data import MSCFranceDataset
        from msc_france.errors import BadInputError
        for where in {cases!r}:
            try:
                MSCFranceDataset({str(tiny_store)!r}, sensors=["sentinel-2-l2a"], split=None, where=where)
                print("ACCEPTED", where)
            except BadInputError as e:
                assert "\\n" not in str(e)
                print("REFUSED", where, "|", e)
        n = len(MSCFranceDataset({str(tiny_store)!r}, sensors=["sentinel-2-l2a"], split=None,
                                 where="chip_index ** 2 >= 0 and abs(valid_fraction_sentinel_2_l2a - 0.5) <= 2"))
        print("PLAIN", n)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-500:]
    refused = [ln for ln in r.stdout.splitlines() if ln.startswith("REFUSED")]
    assert len(refused) == len(cases), r.stdout
    plain = MSCFranceDataset(tiny_store, sensors=["sentinel-2-l2a"], split=None)
    assert f"PLAIN {len(plain)}" in r.stdout and len(plain) > 0


def test_a_view_of_fewer_sensors_keeps_the_same_chips(tiny_store: Path, tmp_path: Path) -> None:
    """Statuses stay those of the first view's sensors: a chip built in every sensor but one is
    kept when that sensor is dropped from the view (eval compares rows on the same tiles)."""
    import shutil

    import pandas as pd
    import zarr

    copy = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, copy)
    idx = gpd.read_parquet(copy / "index.parquet")
    col = idx["status_landsat_8_c2_l2"]
    status = col.astype(str).to_numpy().copy()
    status[0] = "flagged"  # one chip not usable in Landsat
    idx["status_landsat_8_c2_l2"] = pd.Categorical(status, categories=col.cat.categories)
    idx.to_parquet(copy / "index.parquet")
    zarr.open_group(str(copy), mode="r")  # still a store
    full = MSCFranceDataset(copy, split=None, sensors=["sentinel-2-l2a", "aerial"], size=32)
    three = MSCFranceDataset(copy, split=None, sensors=["sentinel-2-l2a", "landsat-8-c2-l2", "aerial"], size=32)
    assert len(three.chip_ids) == len(full.chip_ids) - 1
    assert three.with_view(sensors=["aerial"]).chip_ids == three.chip_ids
