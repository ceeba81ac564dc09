"""Learning-free baselines, the ridge alignment, the shifted gallery and the claims table, each
against an independent numpy computation or a hand-made case.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msc_france.eval.baselines import ColourHistogram, PooledPixels, Thumbnail, ridge_aligned
from msc_france.eval.features import Features, dihedral, query_tiles, shifted_tiles, tile
from msc_france.eval.report import claims, claims_markdown, interval95


def _images(n: int = 5, c: int = 3, s: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    gain = 1 + torch.rand(n, c, 1, 1, generator=g) * 3
    return gain * torch.randn(n, c, s, s, generator=g) + 5 * torch.rand(n, c, 1, 1, generator=g)


def _np_zscore(a: np.ndarray) -> np.ndarray:  # (C, H, W), per channel
    mu = a.mean(axis=(1, 2), keepdims=True)
    sd = a.std(axis=(1, 2), keepdims=True)
    return (a - mu) / np.maximum(sd, 1e-6)


@pytest.mark.parametrize("grid", [4, 8, 16])
def test_zscored_thumbnail_equals_numpy(grid: int) -> None:
    x = _images()
    got = Thumbnail(grid)(x, "any")[:, 0, : 3 * grid * grid].numpy()
    for i, img in enumerate(x.numpy().astype(np.float64)):
        c, s, _ = img.shape
        k = s // grid
        pooled = img.reshape(c, grid, k, grid, k).mean(axis=(2, 4))
        assert np.allclose(got[i], _np_zscore(pooled).reshape(-1), atol=1e-4)
    # A per-tile gain and offset changes nothing.
    assert torch.allclose(Thumbnail(grid)(3.0 * x - 7.0, "s"), Thumbnail(grid)(x, "s"), atol=1e-4)


def test_colour_histogram_equals_numpy_and_ignores_layout() -> None:
    x = _images(n=3, s=24)
    got = ColourHistogram()(x, "any")[:, 0, :30].numpy()
    for i, img in enumerate(x.numpy().astype(np.float64)):
        z = np.clip(_np_zscore(img), -3, 3)
        want = np.concatenate([np.histogram(z[ch], bins=10, range=(-3, 3))[0] / z[ch].size for ch in range(3)])
        assert np.allclose(got[i], want, atol=1e-6)
    turned = torch.rot90(x, 1, dims=(-2, -1)).flip(-1)
    assert torch.allclose(ColourHistogram()(turned, "s")[:, 0], ColourHistogram()(x, "s")[:, 0])


def test_baselines_pool_their_tile_vector() -> None:
    x = _images(n=2, s=64)
    for enc in (PooledPixels(4), Thumbnail(8), ColourHistogram()):
        tok = enc(x, "s")
        assert tok.shape[1] == 1 + (64 // 16) ** 2 and enc.pooled_is_cls
        # Patch tokens: each 16 px patch's colour, z-scored per tile and channel.
        patch = x.numpy().reshape(2, 3, 4, 16, 4, 16).mean(axis=(3, 5))
        want = np.stack([_np_zscore(p) for p in patch]).reshape(2, 3, 16).transpose(0, 2, 1)
        assert np.allclose(tok[:, 1:, :3].numpy(), want, atol=1e-4)


def test_ridge_alignment_equals_numpy_closed_form() -> None:
    g = torch.Generator().manual_seed(1)
    n, d = 40, 6
    ref = torch.randn(n, d, generator=g)
    mix = torch.randn(d, d, generator=g)
    other = ref @ mix + 0.1 * torch.randn(n, d, generator=g)

    def feats(a: torch.Tensor, b: torch.Tensor) -> Features:
        f = Features(["ref", "other"])
        f.cls, f.mean = {"ref": a, "other": b}, {"ref": a, "other": b}
        f.patches = {"ref": a[:, None].repeat(1, 2, 1), "other": b[:, None].repeat(1, 2, 1)}
        return f

    held_ref = torch.randn(7, d, generator=g)
    held = feats(held_ref, held_ref @ mix)
    lam = 0.5
    tr_m, held_m = ridge_aligned(feats(ref, other), [held], "ref", lam)
    x, y = other.double().numpy(), ref.double().numpy()
    mu, sd = x.mean(0), x.std(0, ddof=1)
    z = (x - mu) / sd
    w = np.linalg.solve(z.T @ z + lam * n * np.eye(d), z.T @ (y - y.mean(0)))
    want = ((held_ref @ mix).double().numpy() - mu) / sd @ w + y.mean(0)
    assert np.allclose(held_m.cls["other"].numpy(), want, atol=1e-4)
    assert torch.equal(held_m.cls["ref"], held_ref)  # the reference sensor is left as it is
    assert np.allclose(tr_m.mean["other"].numpy(), (z @ w + y.mean(0)), atol=1e-4)


def test_shifted_gallery_geometry() -> None:
    k, s = 3, 8
    x = torch.arange(k * s * k * s, dtype=torch.float32).reshape(1, k * s, k * s)
    grid, shifted = tile(x, k), shifted_tiles(x, k)
    assert shifted.shape == ((k - 1) ** 2, 1, s, s)
    q = s // 4
    # Shifted tile (r, c) starts a quarter tile below and right of grid tile (r, c).
    for r in range(k - 1):
        for c in range(k - 1):
            t = shifted[r * (k - 1) + c, 0]
            assert t[0, 0] == x[0, r * s + q, c * s + q]
            # Its largest overlap among grid tiles is tile (r, c): 6 x 6 of 8 x 8 pixels here.
            overlap = {(rr, cc): np.isin(t.numpy(), grid[rr * k + cc, 0].numpy()).sum()
                       for rr in range(k) for cc in range(k)}
            assert max(overlap, key=overlap.get) == (r, c) and overlap[(r, c)] == (s - q) ** 2
    assert query_tiles(k).tolist() == [0, 1, 3, 4]
    img = np.arange(2 * 16).reshape(2, 4, 4).astype(np.float32)
    for code in range(8):
        want = np.rot90(img, code % 4, axes=(1, 2))
        want = want[:, :, ::-1] if code >= 4 else want
        assert np.array_equal(dihedral(torch.from_numpy(img)[None], torch.tensor([code]))[0].numpy(), want)


def test_interval_and_claims_need_more_than_a_tie() -> None:
    mean, hw = interval95([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and hw == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)

    def model(r2: float) -> dict:
        ss = ["a", "b"]
        return {"sensors": ss, "fractions_r2": {f"{x}->{y}": r2 for x in ss for y in ss},
                "transfer": {f"{x}->{y}": {"balanced_acc": 0.5} for x in ss for y in ss},
                "segmentation": {s: {"mIoU": 0.3, "transfer_mIoU": {t: 0.2 for t in ss if t != s}} for s in ss},
                "retrieval": {k: {"mean_R@1": 0.4} for k in ("mean", "cls", "dense")},
                "classification": {s: {"linear_acc": 0.5, "linear_balanced_acc": 0.5} for s in ss}}

    view = {"models": {"thumb": model(0.3), "same": model(0.3), "better": model(0.4)},
            "roles": {"thumb": "baseline", "same": "model", "better": "model"},
            "groups": {"thumb": "thumb", "same": "same", "better": "better"}}
    cl = {c.group: c for c in claims(view) if c.metric == "fractions R2 cross"}
    assert (cl["same"].baseline, cl["same"].baseline_mean, cl["same"].beats) == ("thumb", 0.3, False)
    assert cl["better"].beats and abs(cl["better"].mean - cl["better"].baseline_mean - 0.1) < 1e-9
    row = next(line for line in claims_markdown(claims(view)) if line.startswith("| fractions R2 cross"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "thumb 0.300" and cells[2].endswith("ties (+0.000)") and cells[3].endswith("yes (+0.100)")


def test_a_baseline_scored_as_a_model_gets_the_same_numbers(tiny_store) -> None:  # noqa: ANN001
    from msc_france.eval.run import EvalConfig, Model, _datasets, _rows, _score, baseline_bands
    from msc_france.store import Store
    from msc_france.xstars.inputs import ModelSpec, from_stats

    cfg = EvalConfig(store=str(tiny_store), input_size=32, tiles=2, test_splits=["val"], baselines=[])
    train, held, class_index, names = _datasets(cfg, 64)
    own = from_stats(Store.open(str(tiny_store)), cfg.sensors, baseline_bands(cfg, []), 32, ModelSpec("thumb8", 16, 32))
    entries = []
    for baseline in (True, False):
        m = Model("thumb8", Thumbnail(8), {"arch": "thumb8"}, own, baseline=baseline, ridge=True)
        rows = _rows(m, cfg, train, held, class_index, torch.device("cpu"))
        assert [r.name for r in rows] == ["thumb8", "thumb8+ridge"]
        entries.append([_score(r, "val", cfg, len(class_index), names)[0] for r in rows])
    assert entries[0] == entries[1]  # the role only decides which row a claim is compared with
