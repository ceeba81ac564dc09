"""The CLI: discovery commands, plan, and one-line errors with non-zero exits for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import yaml

from msc_france.cli import main
from msc_france.paths import pipelines_dir
from tests.helpers import one_provider_yaml


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_regions_and_sensors(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "regions")
    assert code == 0 and "toulouse" in out and "demo" in out
    assert not any(line.startswith("france ") for line in out.splitlines())
    code, out, _ = run(capsys, "sensors")
    assert code == 0 and "stac-api:sentinel-2-l2a" in out and "planetarycomputer" in out
    code, out, _ = run(capsys, "sensors", "--catalog", "demo")
    assert code == 0 and "generated demo world" in out


def test_plan_prints_counts_for_all_sensors(capsys, tiny_world, tiny_recipe, tiny_region, tmp_path) -> None:
    out_path = tmp_path / "p.parquet"
    code, out, err = run(capsys, "plan", "--region", str(tiny_region), "--recipe", str(tiny_recipe),
                         "--out", str(out_path))
    assert code == 0, err
    for s in ("sentinel-2-l2a", "landsat-8-c2-l2", "aerial", "esa-worldcover"):
        assert f"{s} " in out and "4/4" in out
    assert len(gpd.read_parquet(out_path)) > 0


def _bad_recipe(tmp_path: Path, name: str, **changes) -> str:
    rec = yaml.safe_load((pipelines_dir() / "demo.yaml").read_text())
    rec.update(changes)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(rec))
    return str(p)


BAD = [
    (["plan", "--region", "atlantis", "--recipe", "demo", "--out", "{tmp}/p.parquet"], "unknown region 'atlantis'"),
    (["plan", "--region", "toulose", "--recipe", "demo", "--out", "{tmp}/p.parquet"], "did you mean toulouse"),
    (["plan", "--region", "1,2,3", "--recipe", "demo", "--out", "{tmp}/p.parquet"], "unknown region"),
    (["plan", "--region", "1.5,43.5,1.4,43.6", "--recipe", "demo", "--out", "{tmp}/p.parquet"], "inverted"),
    (["plan", "--region", "-74.1,40.6,-73.9,40.8", "--recipe", "demo", "--out", "{tmp}/p.parquet"],
     "outside metropolitan France"),
    (["plan", "--region", "demo", "--recipe", "{unknown_key}", "--out", "{tmp}/p.parquet"], "unknown key"),
    (["plan", "--region", "demo", "--recipe", "{wrong_type}", "--out", "{tmp}/p.parquet"], "chip_size_m"),
    (["plan", "--region", "demo", "--recipe", "{not_multiple}", "--out", "{tmp}/p.parquet"], "not an integer multiple"),
    (["plan", "--region", "demo", "--recipe", "nope", "--out", "{tmp}/p.parquet"], "file not found"),
    (["plan", "--region", "demo", "--catalog", "nope", "--recipe", "demo", "--out", "{tmp}/p.parquet"], "unknown catalog"),
    (["plan", "--region", "demo"], "Missing option '--out'"),
    (["frobnicate"], "No such command"),
    (["info", "{tmp}/no-store"], "no store at"),
    (["validate", "{tmp}"], "not an msc-france store"),
]


@pytest.mark.parametrize("args,msg", BAD)
def test_bad_input_one_line_error(args, msg, capsys, tmp_path) -> None:
    recipes = {
        "unknown_key": _bad_recipe(tmp_path, "unknown_key", colour="red"),
        "wrong_type": _bad_recipe(tmp_path, "wrong_type", chip_size_m="big"),
        "not_multiple": _bad_recipe(tmp_path, "not_multiple", chip_size_m=1005),
    }
    args = [a.format(tmp=tmp_path, **recipes) for a in args]
    code, out, err = run(capsys, *args)
    assert code != 0
    assert msg in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out


@pytest.mark.timeout(60)
def test_unreachable_stac_api_fails_within_seconds(tmp_path: Path) -> None:
    """Through the console script, against a catalog whose API is down: one line, exit 3."""
    from tests.servers import free_port

    cat = tmp_path / "cat"
    cat.mkdir()
    spec = one_provider_yaml("default", "sentinel-2-l2a")
    spec["source"].update(url=f"http://127.0.0.1:{free_port()}/api/stac/v1", timeout_s=2, max_retries=1)
    (cat / "sentinel-2-l2a.yaml").write_text(yaml.safe_dump(spec))
    rec = yaml.safe_load((pipelines_dir() / "demo.yaml").read_text())
    rec.update(catalog=str(cat), sensors={"sentinel-2-l2a": {}}, labels=None)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    exe = Path(sys.executable).parent / "msc-france"
    p = subprocess.run([str(exe), "plan", "--region", "toulouse", "--recipe", str(tmp_path / "r.yaml"),
                        "--out", str(tmp_path / "p.parquet"), "--no-cache"], capture_output=True, text=True)
    assert p.returncode == 3
    # Progress lines (INFO) may precede it; the error is one line, the last, with no traceback.
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("error: STAC API http://127.0.0.1:") and "unreachable" in lines[-1]
    assert sum(ln.startswith("error") for ln in lines) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "p.parquet").exists()


def test_console_script_flushes_output_and_keeps_exit_codes(tiny_world: Path, tiny_recipe: Path,
                                                            tiny_region: Path, tmp_path: Path) -> None:
    """The console script leaves with ``os._exit`` (no interpreter finalisation, where Arrow's
    thread pools can abort a finished run): what went to a pipe must still arrive whole, the plan
    file must be complete, and the command's exit code must pass through.
    """
    import json

    exe = Path(sys.executable).parent / "msc-france"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as usual
    big = subprocess.run([str(exe), "regions", "--json"], capture_output=True, text=True, env=env)
    assert big.returncode == 0, big.stderr
    # ~4 KB to a pipe, with PYTHONUNBUFFERED unset: all of it must leave the process before os._exit.
    assert {r["name"] for r in json.loads(big.stdout)} >= {"demo", "toulouse"}
    plan = subprocess.run([str(exe), "plan", "--region", str(tiny_region), "--recipe", str(tiny_recipe),
                           "--out", str(tmp_path / "p.parquet")], capture_output=True, text=True, env=env)
    assert plan.returncode == 0, plan.stderr
    assert len(gpd.read_parquet(tmp_path / "p.parquet")) > 0
    bad = subprocess.run([str(exe), "info", str(tmp_path / "missing.zarr")], capture_output=True, text=True, env=env)
    assert bad.returncode == 4 and bad.stderr.strip().splitlines()[-1].startswith("error: no store at ")


def test_demo_region_without_the_demo_recipe_gives_a_hint(tmp_path, capsys) -> None:  # noqa: ANN001
    code = main(["plan", "--region", "demo", "--out", str(tmp_path / "p.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and "add --recipe demo" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.parquet").exists()


def test_static_catalog_path_expands_home_and_variables(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from msc_france.config import Catalog, SensorSpec, SourceSpec, load_catalog
    from msc_france.sources import make_source

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MSC_TEST_DIR", "cats")
    base = load_catalog("local").sensor("aerial")
    for path, want in (("~/a/catalog.json", tmp_path / "a" / "catalog.json"),
                       ("$HOME/$MSC_TEST_DIR/catalog.json", tmp_path / "cats" / "catalog.json")):
        spec = SensorSpec(**{**base.model_dump(), "sources": [SourceSpec(type="static", path=path, collection="aerial")]})
        cat = Catalog(name="x", path=tmp_path, sensors={"aerial": spec})
        assert Path(make_source(spec, cat).path) == want


def test_json_summaries_parse(tiny_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["regions", "--json"]) == 0
    regions = json.loads(capsys.readouterr().out)
    assert any(r["name"] == "demo" for r in regions) and all(len(r["bbox_wgs84"]) == 4 for r in regions)
    assert main(["sensors", "--catalog", "demo", "--json"]) == 0
    sensors = json.loads(capsys.readouterr().out)
    assert {s["sensor"] for s in sensors["sensors"]} >= {"sentinel-2-l2a", "aerial"}
    assert main(["-q", "validate", str(tiny_store), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True and report["corrupt"] == [] and report["checked_chips"] == 16


def test_verbosity_controls_the_log(tiny_recipe: Path, tiny_region: Path, tiny_world: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import json

    args = ["plan", "--region", str(tiny_region), "--recipe", str(tiny_recipe), "--out", str(tmp_path / "p.parquet")]
    assert main(["-v", *args, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["chips"] == 4  # stdout stays pure JSON
    assert "INFO msc_france.plan: searching sentinel-2-l2a" in err
    assert main(["-q", *args]) == 0
    assert "searching" not in capsys.readouterr().err


def test_build_reports_progress_per_chip_and_sensor(tiny_recipe: Path, tiny_region: Path, tiny_world: Path,
                                                    tmp_path: Path) -> None:
    from msc_france.builder import run_build
    from msc_france.config import load_catalog, load_recipe
    from msc_france.plan import make_plan
    from msc_france.regions import parse_region

    class Record:
        def __init__(self) -> None:
            self.total, self.steps = None, []

        def start(self, total: int) -> None:
            self.total = total

        def advance(self, n: float = 1) -> None:
            self.steps.append(n)

    rec = load_recipe(str(tiny_recipe))
    plan = make_plan(parse_region(str(tiny_region)), rec, load_catalog(rec.catalog))
    p = Record()
    run_build(plan, tmp_path / "s.zarr", workers=1, progress=p)
    assert p.total == 4 and sum(p.steps) == pytest.approx(4)
    assert len(p.steps) == 4 * 4 and all(s == pytest.approx(0.25) for s in p.steps)  # 4 chips x 4 sensors
    p2 = Record()
    run_build(plan, tmp_path / "s.zarr", workers=1, progress=p2)  # nothing left to do
    assert p2.total == 0 and p2.steps == []


def test_a_catalog_naming_an_unknown_product_is_refused_before_any_search(capsys: pytest.CaptureFixture,
                                                                          tmp_path: Path, tiny_region: Path) -> None:
    cat = tmp_path / "cat"
    cat.mkdir()
    spec = one_provider_yaml("default", "sentinel-2-l2a")
    spec["product"] = "sentinel-2-l1c"
    (cat / "sentinel-2-l2a.yaml").write_text(yaml.safe_dump(spec))
    for args in (("sensors", "--catalog", str(cat)),
                 ("plan", "--region", str(tiny_region), "--catalog", str(cat), "--out", str(tmp_path / "p.parquet"))):
        code, out, err = run(capsys, *args)
        assert code == 2 and err.count("\n") == 1, err
        assert "sensor 'sentinel-2-l2a': unknown product 'sentinel-2-l1c'" in err and str(cat) in err
    assert not (tmp_path / "p.parquet").exists()
