"""Extending msc-france without editing it: a sensor is one YAML, a product family one module.

A copy of the tiny demo catalog gets two sensors that no code names: ``ortho-copy`` (the aerial
camera under another name, licence and display name: YAML only) and ``ortho-half`` (the same
camera read by a product family this test registers with ``register_product``, whose rule halves
every value). One store is built with both; the card, the previews, the X-STARS export and the
model card show the YAML's words, and the registered product's rule is what the store holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml

from msc_france.cli import main
from msc_france.products import PRODUCTS, ProductRules, register_product

LICENCE = "CC0 1.0 (test licence, stated in the YAML only)"
PROVENANCE = "a second reading of the demo aerial camera"


class HalfDN(ProductRules):
    """A product family known to no module of msc-france: every value halved."""

    name: ClassVar[str] = "half-dn"

    def radiometry(self, spec: Any, item: dict[str, Any], key: str, asset: dict[str, Any],
                   index: int) -> tuple[float, float, str]:
        """Physical value = DN / 2."""
        return 0.5, 0.0, "DN * 0.5 (half-dn)"


@pytest.fixture(scope="module")
def extended(tiny_catalog: Path, tiny_recipe: Path, tiny_region: Path, tiny_world: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_product(HalfDN())
    root = tmp_path_factory.mktemp("extended")
    cat = root / "catalog"
    shutil.copytree(tiny_catalog, cat)
    aerial = yaml.safe_load((cat / "aerial.yaml").read_text())
    aerial.pop("display_name")  # the demo aerial's is SPOT (the reference code's folder): each its own
    for name, extra in (("ortho-copy", {"display_name": "ORTHO"}), ("ortho-half", {"product": "half-dn"})):
        spec = {**aerial, "name": name, "title": f"{name} (test sensor)", "licence": LICENCE,
                "provenance": PROVENANCE, **extra}
        (cat / f"{name}.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    rec = yaml.safe_load(tiny_recipe.read_text())
    rec["catalog"] = str(cat)
    rec["sensors"] = {k: rec["sensors"][k] for k in ("sentinel-2-l2a", "aerial")}
    rec["sensors"]["ortho-copy"] = rec["sensors"]["ortho-half"] = rec["sensors"]["aerial"]
    (root / "recipe.yaml").write_text(yaml.safe_dump(rec))
    out = root / "ext.zarr"
    try:
        assert main(["build", "--region", str(tiny_region), "--recipe", str(root / "recipe.yaml"), "--out", str(out),
                     "--quiet"]) == 0
    finally:
        PRODUCTS.pop("half-dn", None)
    return out


def test_a_sensor_added_by_yaml_alone_reaches_card_previews_and_exports(extended: Path, tmp_path: Path) -> None:
    assert main(["card", str(extended), "--out", str(tmp_path / "card")]) == 0
    card = json.loads((tmp_path / "card" / "card.json").read_text())
    row = card["layers"]["ortho-copy"]
    assert (row["licence"], row["source"]) == (LICENCE, PROVENANCE)
    assert LICENCE in (tmp_path / "card" / "card.md").read_text()
    assert main(["export", str(extended), "--format", "xstars-folders", "--out", str(tmp_path / "x")]) == 0
    assert {p.name for p in (tmp_path / "x").iterdir() if p.is_dir()} == {"ORTHO", "SPOT", "Sentinel", "ortho-half"}
    assert main(["preview", str(extended), "--out", str(tmp_path / "p")]) == 0
    assert any(p.suffix == ".png" for p in (tmp_path / "p").iterdir())


def test_a_product_added_by_registration_alone_builds(extended: Path) -> None:
    import zarr

    root = zarr.open_group(str(extended), mode="r")
    aerial = np.asarray(root["aerial"]["image"][:], dtype=np.float64)
    half = np.asarray(root["ortho-half"]["image"][:], dtype=np.float64)
    valid = np.asarray(root["aerial"]["valid"][:], bool)[:, None] & (aerial > 0)
    assert valid.sum() > 10_000
    # The registered rule halved every value: the same camera, warped the same way, at half the DN.
    np.testing.assert_allclose(half[np.broadcast_to(valid, half.shape)],
                               aerial[np.broadcast_to(valid, aerial.shape)] / 2, atol=1.0)
    assert root["ortho-half"].attrs["msc_france:sensor"]["licence"] == LICENCE


def test_an_unknown_product_names_the_registered_ones(tiny_catalog: Path, tmp_path: Path) -> None:
    from msc_france.errors import BadInputError
    from msc_france.products import rules_for

    with pytest.raises(BadInputError, match="unknown product 'half-dn' \\(known: landsat-c2-l2, raster"):
        rules_for("half-dn")
    with pytest.raises(BadInputError, match="already registered"):
        register_product(type("Other", (HalfDN,), {"name": "raster"})())


def test_two_sensors_with_one_display_name_are_refused_by_the_export(extended: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Folders are named by display name: two sensors called SPOT would overwrite each other's PNGs."""
    import zarr

    copy = tmp_path / "copy.zarr"
    shutil.copytree(extended, copy)
    g = zarr.open_group(str(copy), mode="r+")["ortho-copy"]
    g.attrs["msc_france:sensor"] = {**g.attrs["msc_france:sensor"], "display_name": "SPOT"}
    zarr.consolidate_metadata(str(copy))
    assert main(["export", str(copy), "--format", "xstars-folders", "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert "aerial and ortho-copy are both displayed as 'SPOT'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "SPOT").exists()
