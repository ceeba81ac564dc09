"""Importing timm-, DINO- and SSL4EO-style ViT weights, and exporting encoders in timm's layout,
checked against a ViT forward pass written here from timm's key layout with plain torch ops (not
the project's ViT), and against band indices worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from msc_france.errors import TrainingError
from msc_france.xstars.weights import export_encoder, import_vit

DIM, DEPTH, HEADS, PATCH = 64, 2, 2, 8  # vit_test


def _timm_state(bands: int, tokens: int, seed: int = 0, extra: bool = True) -> dict[str, torch.Tensor]:
    """A ViT state dict with timm's key names (random weights), as timm's VisionTransformer writes it."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    sd = {"cls_token": r(1, 1, DIM), "pos_embed": r(1, 1 + tokens, DIM),
          "patch_embed.proj.weight": r(DIM, bands, PATCH, PATCH), "patch_embed.proj.bias": r(DIM),
          "norm.weight": 1 + r(DIM), "norm.bias": r(DIM)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(DIM), b + "norm1.bias": r(DIM), b + "attn.qkv.weight": r(3 * DIM, DIM),
                   b + "attn.qkv.bias": r(3 * DIM), b + "attn.proj.weight": r(DIM, DIM), b + "attn.proj.bias": r(DIM),
                   b + "norm2.weight": 1 + r(DIM), b + "norm2.bias": r(DIM), b + "mlp.fc1.weight": r(4 * DIM, DIM),
                   b + "mlp.fc1.bias": r(4 * DIM), b + "mlp.fc2.weight": r(DIM, 4 * DIM), b + "mlp.fc2.bias": r(DIM)})
    if extra:
        sd.update({"head.weight": r(10, DIM), "head.bias": r(10)})  # a classifier: not part of the encoder
    return sd


def _reference(sd: dict[str, torch.Tensor], x: torch.Tensor, embed: str = "patch_embed.proj") -> torch.Tensor:
    """The forward pass of timm's ViT (pre-norm blocks, class token first, final norm), from its keys."""
    t = F.conv2d(x, sd[f"{embed}.weight"], sd[f"{embed}.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], dim=1) + sd["pos_embed"]
    b_, n, d = t.shape
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(
            b_, n, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * (d // HEADS) ** -0.5, dim=-1)
        t = t + F.linear((a @ v).transpose(1, 2).reshape(b_, n, d), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(t, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        t = t + F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                         sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return F.layer_norm(t, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


def test_timm_weights_give_timms_forward(tmp_path: Path) -> None:
    sd = _timm_state(bands=3, tokens=16)  # 32 px images, 4 x 4 patches
    torch.save(sd, tmp_path / "vit.pth")
    imp = import_vit(tmp_path / "vit.pth", "timm", {"aerial": ["red", "green", "blue"]}, "vit_test", PATCH, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(imp.vit(x, "aerial"), _reference(sd, x), atol=1e-5)
    assert imp.report.unexpected == ["head.bias", "head.weight"] and not imp.report.adapted
    assert imp.report.head == "the source has none"


def test_position_embeddings_of_another_size_are_resized(tmp_path: Path) -> None:
    sd = _timm_state(bands=3, tokens=16, extra=False)
    torch.save(sd, tmp_path / "vit.pth")
    imp = import_vit(tmp_path / "vit.pth", "timm", {"s": ["red", "green", "blue"]}, "vit_test", PATCH, 64)
    pos = imp.vit.pos_embed.detach()
    assert pos.shape == (1, 1 + 64, DIM)
    assert torch.equal(pos[:, 0], sd["pos_embed"][:, 0])  # the class token is not part of the grid
    assert "16 patches resized to 64" in imp.report.adapted["pos_embed"]
    # A constant grid stays constant under bicubic resizing (a hand-checkable case).
    sd["pos_embed"][:, 1:] = 0.25
    torch.save(sd, tmp_path / "flat.pth")
    flat = import_vit(tmp_path / "flat.pth", "timm", {"s": ["red", "green", "blue"]}, "vit_test", PATCH, 64)
    assert torch.allclose(flat.vit.pos_embed.detach()[:, 1:], torch.full((1, 64, DIM), 0.25), atol=1e-6)


def test_ssl4eo_bands_are_selected_by_name(tmp_path: Path) -> None:
    sd = _timm_state(bands=13, tokens=16)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "ssl4eo.ckpt")
    imp = import_vit(tmp_path / "ssl4eo.ckpt", "timm", {"sentinel-2-l2a": ["red", "green", "blue", "nir"],
                                                        "pan": ["pan"]}, "vit_test", PATCH, 32,
                     source_bands="ssl4eo-s12")
    w = sd["patch_embed.proj.weight"]
    # SSL4EO order B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12: red B04 = 3, green B03 = 2,
    # blue B02 = 1, nir B08 = 7.
    got = imp.vit.patch_embed["sentinel-2-l2a"].weight.detach()
    assert torch.equal(got, w[:, [3, 2, 1, 7]])
    assert torch.allclose(imp.vit.patch_embed["pan"].weight.detach()[:, 0], w.mean(dim=1))
    assert "pan (absent from the source) from the mean" in imp.report.adapted["patch_embed.pan.proj.weight"]
    x = torch.randn(1, 4, 32, 32)
    want = _reference({**sd, "patch_embed.proj.weight": w[:, [3, 2, 1, 7]]}, x)
    with torch.no_grad():
        assert torch.allclose(imp.vit(x, "sentinel-2-l2a"), want, atol=1e-5)


def test_dino_checkpoints_keep_their_head(tmp_path: Path) -> None:
    sd = _timm_state(bands=3, tokens=16, extra=False)
    head = {"mlp.0.weight": torch.randn(32, DIM), "mlp.0.bias": torch.zeros(32), "last_layer.weight_g": torch.ones(
        100, 1), "last_layer.weight_v": torch.randn(100, 16)}
    teacher = {f"module.backbone.{k}": v for k, v in sd.items()} | {f"module.head.{k}": v for k, v in head.items()}
    torch.save({"teacher": teacher, "student": {}, "epoch": 3}, tmp_path / "dino.pth")
    imp = import_vit(tmp_path / "dino.pth", "dino", {"s": ["red", "green", "blue"]}, "vit_test", PATCH, 32)
    assert imp.head is not None and set(imp.head) == {"mlp.0.weight", "mlp.0.bias",
                                                      "last_layer.parametrizations.weight.original0",
                                                      "last_layer.parametrizations.weight.original1"}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(imp.vit(x, "s"), _reference(sd, x), atol=1e-5)


def test_what_does_not_fit_is_refused(tmp_path: Path) -> None:
    sd = _timm_state(bands=3, tokens=16, extra=False)
    del sd["blocks.1.attn.qkv.weight"]
    torch.save(sd, tmp_path / "a.pth")
    missing = r"1 backbone tensor\(s\) are neither in the weights nor adapted: blocks.1.attn.qkv.weight;"
    with pytest.raises(TrainingError, match=missing):
        import_vit(tmp_path / "a.pth", "timm", {"s": ["red", "green", "blue"]}, "vit_test", PATCH, 32)
    torch.save(_timm_state(bands=13, tokens=16), tmp_path / "b.pth")
    with pytest.raises(TrainingError, match="name the source's bands"):
        import_vit(tmp_path / "b.pth", "timm", {"s": ["red", "green", "blue"]}, "vit_test", PATCH, 32)
    with pytest.raises(TrainingError, match=r"cls_token is \(1, 1, 64\), vit_tiny/8 needs \(1, 1, 192\)"):
        import_vit(tmp_path / "b.pth", "timm", {"s": ["red", "green", "blue"]}, "vit_tiny", PATCH, 32,
                   source_bands="ssl4eo-s12")


def test_exported_encoders_load_with_plain_torch_and_back(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from msc_france.xstars.vit import ViT

    vit = ViT({"sentinel-2-l2a": 4, "aerial": 3}, "vit_test", PATCH, 32, drop_path=0.0).eval()
    export_encoder(vit, tmp_path / "enc", {"sensors": {"sentinel-2-l2a": ["red", "green", "blue", "nir"],
                                                       "aerial": ["red", "green", "blue"]}})
    cfg = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert (cfg["architecture"], cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["patch_size"]) == \
        ("vit_test", DIM, DEPTH, HEADS, PATCH)
    sd = load_file(str(tmp_path / "enc" / "model.safetensors"))
    assert "patch_embed.aerial.proj.weight" in sd and "blocks.0.mlp.fc1.weight" in sd
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = vit(x, "aerial")
        assert torch.allclose(_reference(sd, x, embed="patch_embed.aerial.proj"), ours, atol=1e-5)
        back = import_vit(tmp_path / "enc" / "model.safetensors", "timm",
                          {"sentinel-2-l2a": ["red", "green", "blue", "nir"], "aerial": ["red", "green", "blue"]},
                          "vit_test", PATCH, 32)
        assert torch.allclose(back.vit.eval()(x, "aerial"), ours, atol=1e-6)
        assert not back.report.adapted and not back.report.unexpected


def test_resized_position_embeddings_equal_an_independent_interpolation(tmp_path: Path) -> None:
    sd = _timm_state(bands=3, tokens=16, extra=False)
    torch.save(sd, tmp_path / "vit.pth")
    imp = import_vit(tmp_path / "vit.pth", "timm", {"s": ["red", "green", "blue"]}, "vit_test", PATCH, 48)
    grid = sd["pos_embed"][0, 1:].reshape(4, 4, DIM).permute(2, 0, 1)[None]  # (1, dim, 4, 4)
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(36, DIM)
    assert torch.allclose(imp.vit.pos_embed.detach()[0, 1:], want, atol=1e-6)


def test_weights_that_lie_about_their_tensors_are_refused(tmp_path: Path) -> None:
    """An I32 header over float bytes (safetensors), NaN weights, a position grid declaring 4096^2
    patches in a zero-stride view: refused by name, before a conversion allocates anything.
    """
    from safetensors.torch import save_file

    sd = _timm_state(bands=3, tokens=16, extra=False)
    liar = dict(sd)
    liar["pos_embed"] = sd["pos_embed"].contiguous().view(torch.int32)  # the same bytes, declared int32
    save_file(liar, str(tmp_path / "i32.safetensors"))
    with pytest.raises(TrainingError, match="pos_embed is int32, not floating point"):
        import_vit(tmp_path / "i32.safetensors", "timm", {"s": ["red", "green", "blue"]}, "vit_test", PATCH, 32)
    nan = dict(sd)
    nan["blocks.0.mlp.fc1.weight"] = sd["blocks.0.mlp.fc1.weight"].clone()
    nan["blocks.0.mlp.fc1.weight"][3, 3] = float("nan")
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(TrainingError, match="blocks.0.mlp.fc1.weight holds NaN or inf"):
        import_vit(tmp_path / "nan.pth", "timm", {"s": ["red", "green", "blue"]}, "vit_test", PATCH, 32)
    huge = dict(sd)
    huge["pos_embed"] = torch.zeros(1, 1, DIM, dtype=torch.float16).expand(1, 1 + 4096**2, DIM)
    torch.save(huge, tmp_path / "huge.pth")
    assert (tmp_path / "huge.pth").stat().st_size < 2**20
    with pytest.raises(TrainingError, match=r"pos_embed declares 16777216 patches, more than 262144"):
        import_vit(tmp_path / "huge.pth", "timm", {"s": ["red", "green", "blue"]}, "vit_test", PATCH, 32)


@pytest.mark.timeout(120)
def test_a_crafted_position_grid_is_refused_within_memory_and_time_bounds(tmp_path: Path) -> None:
    """The 4,096^2-patch zero-stride ``pos_embed`` (a file under 1 MiB) imported in a child process
    capped at 2 GB of address space and 60 s: a one-line TrainingError, never a MemoryError or a
    long interpolation (before the bound, this allocated 4.3 GB).
    """
    import subprocess
    import sys
    import textwrap

    sd = _timm_state(bands=3, tokens=16, extra=False)
    sd["pos_embed"] = torch.zeros(1, 1, DIM, dtype=torch.float16).expand(1, 1 + 4096**2, DIM)
    torch.save(sd, tmp_path / "crafted.pth")
    script = textwrap.dedent(f"""
        import resource, time
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
        from msc_france.errors import TrainingError
        from msc_france.xstars.weights import import_vit
        t = time.perf_counter()
        try:
            import_vit({str(tmp_path / "crafted.pth")!r}, "timm", {{"s": ["red", "green", "blue"]}}, "vit_test", {PATCH}, 32)
            print("LOADED")
        except TrainingError as e:
            print("REFUSED", time.perf_counter() - t, str(e).count("\\n"))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-400:]
    verdict, seconds, newlines = r.stdout.split()
    assert verdict == "REFUSED" and float(seconds) < 10 and newlines == "0"
