"""Config models: every shipped file loads; bad recipes give one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from msc_france.config import check_chip_size, load_catalog, load_recipe, sensor_gsds
from msc_france.errors import BadInputError
from msc_france.paths import catalogs_dir, pipelines_dir


@pytest.mark.parametrize("name", ["default", "demo"])
def test_shipped_catalogs_load(name: str) -> None:
    cat = load_catalog(name)
    assert set(cat.sensors) == {"sentinel-2-l2a", "landsat-8-c2-l2", "aerial", "esa-worldcover"}
    s2 = cat.sensor("sentinel-2-l2a")
    assert [b.asset for b in s2.bands] == ["B02", "B03", "B04", "B08"]
    assert [(m.asset, m.type) for m in s2.masks] == [("SCL", "scl")] and s2.product == "sentinel-2-l2a"
    assert s2.scale == 1e-4 and s2.stored_range == (1, 65535)
    l8 = cat.sensor("landsat-8-c2-l2")
    assert l8.source.collection == "landsat-c2-l2" and l8.source.properties == {"platform": "landsat-8"}
    assert [b.asset for b in l8.bands] == ["blue", "green", "red", "nir08"]
    assert l8.product == "landsat-c2-l2"
    assert cat.sensor("aerial").stored_range == (0, 255) and cat.sensor("aerial").units == "DN"
    assert cat.sensor("esa-worldcover").kind == "labels"
    assert (cat.world is not None) == (name == "demo")


def test_default_catalog_points_at_planetary_computer() -> None:
    cat = load_catalog("default")
    for name in ("sentinel-2-l2a", "landsat-8-c2-l2", "esa-worldcover"):
        src = cat.sensor(name).source
        assert src.type == "stac-api"
        assert src.url == "https://planetarycomputer.microsoft.com/api/stac/v1"
        assert src.signing == "planetary-computer"


@pytest.mark.parametrize("name", ["msc-france", "demo"])
def test_shipped_recipes_load(name: str) -> None:
    rec = load_recipe(name)
    gsds = sensor_gsds(rec, load_catalog(rec.catalog))
    assert gsds == {"sentinel-2-l2a": 10, "landsat-8-c2-l2": 30, "aerial": 1.5, "esa-worldcover": 10}
    assert rec.chip_size_m == {"msc-france": 1920, "demo": 960}[name]


def _write(tmp_path: Path, **changes) -> Path:
    rec = yaml.safe_load((pipelines_dir() / "demo.yaml").read_text())
    for k, v in changes.items():
        rec[k] = v
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(rec))
    return p


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="chip_sise_m: unknown key"):
        load_recipe(str(_write(tmp_path, chip_sise_m=960)))


def test_nested_unknown_key_is_an_error(tmp_path: Path) -> None:
    rec = yaml.safe_load((pipelines_dir() / "demo.yaml").read_text())
    rec["sensors"]["aerial"]["gds"] = 2
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(rec))
    with pytest.raises(BadInputError, match=r"sensors\.aerial\.gds: unknown key"):
        load_recipe(str(p))


def test_wrong_type_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="chip_size_m"):
        load_recipe(str(_write(tmp_path, chip_size_m="big")))


def test_inverted_time_window(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="ends .* before it starts"):
        load_recipe(str(_write(tmp_path, time={"start": "2021-09-01", "end": "2021-04-01"})))


def test_bad_date(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="time.start"):
        load_recipe(str(_write(tmp_path, time={"start": "2021-13-01", "end": "2021-04-01"})))


def test_chip_size_not_multiple_of_gsd(tmp_path: Path) -> None:
    rec = load_recipe(str(_write(tmp_path, chip_size_m=1005)))
    with pytest.raises(BadInputError, match="not an integer multiple of landsat-8-c2-l2's GSD 30 m"):
        sensor_gsds(rec, load_catalog("demo"))


def test_check_chip_size_accepts_fractional_gsd() -> None:
    check_chip_size(1920, {"aerial": 1.5, "s2": 10})
    with pytest.raises(BadInputError):
        check_chip_size(1921, {"aerial": 1.5})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="file not found"):
        load_recipe(str(tmp_path / "nope.yaml"))
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(BadInputError, match="invalid YAML"):
        load_recipe(str(p))
    p.write_text("- a list\n")
    with pytest.raises(BadInputError, match="expected a mapping"):
        load_recipe(str(p))


def test_unknown_sensor_in_recipe(tmp_path: Path) -> None:
    rec = load_recipe(str(_write(tmp_path, sensors={"sentinel-3": {}})))
    with pytest.raises(BadInputError, match="unknown sensor 'sentinel-3'"):
        sensor_gsds(rec, load_catalog("demo"))


def test_unknown_catalog() -> None:
    with pytest.raises(BadInputError, match="unknown catalog 'nope'.*default.*demo"):
        load_catalog("nope")


def test_recipe_rules_differ_only_where_content_or_split_rules_do() -> None:
    """The recipe, not the store, says which of its keys matter: a new name, catalog or limits
    appends to a store; a new time window, chip size or split rule does not.
    """
    rec = load_recipe("demo")
    stored = rec.rules().to_json()
    same = rec.model_copy(update={"name": "renamed", "catalog": "elsewhere"})
    assert same.rules().differences(stored) == []
    changed = rec.model_copy(update={"chips_per_shard": rec.chips_per_shard * 2})
    assert changed.rules().differences(stored) == [f"chips_per_shard: {rec.chips_per_shard} -> "
                                                   f"{rec.chips_per_shard * 2}"]
    nested = {**stored, "split": {**stored["split"], "salt": "other"}}
    assert rec.rules().differences(nested) == [f"split.salt: 'other' -> {stored['split']['salt']!r}"]


def test_one_source_or_several_providers(tmp_path: Path) -> None:
    """``source`` is one provider, ``sources`` several; both at once, or two providers of one name,
    are refused in one line naming the file.
    """
    base = yaml.safe_load((catalogs_dir() / "default" / "sentinel-2-l2a.yaml").read_text())
    assert [s.provider for s in load_catalog("default").sensor("sentinel-2-l2a").sources] == [
        "planetary-computer", "earth-search", "earth-search-c1"]
    for n, (change, message) in enumerate((({"source": base["sources"][0]}, "give 'source' (one provider) or 'sources'"),
                            ({"sources": [base["sources"][0]] * 2}, "providers named twice: planetary-computer"))):
        d = tmp_path / f"cat{n}"
        d.mkdir()
        (d / "s.yaml").write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(BadInputError, match=re.escape(message)) as e:
            load_catalog(str(d))
        assert "\n" not in str(e.value) and "s.yaml" in str(e.value)


def test_endpoints_setting_moves_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSC_FRANCE_ENDPOINTS", "https://planetarycomputer.microsoft.com/api/stac/v1=http://127.0.0.1:9/pc "
                       "https://data.geopf.fr/wms-r=http://127.0.0.1:9/wms")
    cat = load_catalog("default")
    s2 = cat.sensor("sentinel-2-l2a").sources
    assert (s2[0].url, s2[0].allow_private_hosts) == ("http://127.0.0.1:9/pc", True)
    assert (s2[1].url, s2[1].allow_private_hosts) == ("https://earth-search.aws.element84.com/v1", False)
    assert cat.sensor("aerial").source.url == "http://127.0.0.1:9/wms"
    monkeypatch.setenv("MSC_FRANCE_ENDPOINTS", "https://a.example=nowhere")
    with pytest.raises(BadInputError, match="MSC_FRANCE_ENDPOINTS: 'https://a.example=nowhere' is not FROM=TO"):
        load_catalog("default")
