"""Hostile inputs and damaged stores: no code execution, no silent wrong data, no hangs.

Each case asserts the one-line error, the exit code, and that nothing was executed, fetched,
lost or written outside its place. Servers run on 127.0.0.1 and stop by themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from msc_france.cli import main
from msc_france.config import SourceSpec
from msc_france.errors import SourceError, StoreError
from msc_france.paths import pipelines_dir
from msc_france.sources.base import SearchQuery
from msc_france.sources.stac_api import StacApiSource
from tests.conftest import write_region_file
from tests.helpers import one_provider_yaml
from tests.servers import AssetServer, _Server

QUERY = SearchQuery("sentinel-2-l2a", (1.3, 43.5, 1.4, 43.6), __import__("datetime").date(2021, 1, 1),
                    __import__("datetime").date(2021, 12, 31))


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- crafted checkpoints


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.target}",))


def _crafted(path: Path, canary: Path) -> Path:
    torch.save({"format": "msc-france-xstars-1", "step": 1, "evil": _Payload(canary)}, path)
    return path


@pytest.fixture()
def small_run(tiny_store: Path, tmp_path: Path) -> dict[str, Path]:
    from msc_france.xstars.train import pretrain
    from tests.helpers import train_config as _cfg

    run = tmp_path / "run"
    pretrain(_cfg(tiny_store, run, optim__steps=2, run__checkpoint_every=2))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    return {"run": run, "train": tmp_path / "train.yaml", "store": tiny_store}


def test_crafted_checkpoint_eval(small_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    canary = tmp_path / "pwned"
    ck = _crafted(tmp_path / "evil.pt", canary)
    code = main(["eval", "--checkpoint", str(ck), "--data", str(small_run["store"]), "--out", str(tmp_path / "e")])
    line = _one_line(capsys.readouterr().err)
    assert code == 7 and "cannot read checkpoint" in line and not canary.exists()


def test_crafted_checkpoint_resume(small_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    canary = tmp_path / "pwned"
    _crafted(small_run["run"] / "checkpoints" / "last.pt", canary)
    code = main(["pretrain", "--config", str(small_run["train"]), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 7 and "cannot read checkpoint" in line and not canary.exists()


def test_crafted_checkpoint_continual(small_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    canary = tmp_path / "pwned"
    ck = _crafted(tmp_path / "evil.pt", canary)
    cfg = yaml.safe_load(small_run["train"].read_text())
    cfg["run"]["out"] = str(tmp_path / "cont")
    cfg["data"]["sensors"] = ["sentinel-2-l2a", "aerial"]
    cfg["continual"] = {"checkpoint": str(ck), "source_sensor": "sentinel-2-l2a", "target_sensor": "aerial"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["pretrain", "--config", str(tmp_path / "c.yaml"), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 7 and "cannot read checkpoint" in line and not canary.exists()


def test_checkpoint_that_is_not_a_zip(tmp_path: Path, small_run: dict, capsys: pytest.CaptureFixture) -> None:
    import pickle

    canary = tmp_path / "pwned"
    p = tmp_path / "old.pt"
    p.write_bytes(pickle.dumps(_Payload(canary)))
    code = main(["eval", "--checkpoint", str(p), "--data", str(small_run["store"]), "--out", str(tmp_path / "e")])
    line = _one_line(capsys.readouterr().err)
    assert code == 7 and "not a PyTorch zip checkpoint" in line and not canary.exists()


def test_yaml_tags_in_set_are_refused(small_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    canary = tmp_path / "pwned"
    code = main(["pretrain", "--config", str(small_run["train"]), "--quiet",
                 "--set", f"optim.steps=!!python/object/apply:os.system ['touch {canary}']"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "not a plain YAML value" in line and not canary.exists()


def test_checkpoint_declaring_a_huge_input_size(small_run: dict, tmp_path: Path) -> None:
    """A real checkpoint whose declared img_size is 32,768: refused before any model is built,
    in a subprocess whose peak memory is measured (measured before the check: 3 GB).
    """
    import subprocess
    import sys

    ck = torch.load(small_run["run"] / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    ck["inputs"]["model"]["img_size"] = 32768
    torch.save(ck, tmp_path / "big.pt")
    exe = str(Path(sys.executable).parent / "msc-france")
    # A fresh parent measures only this command's peak (RUSAGE_CHILDREN of pytest holds every earlier child's).
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(r.stderr); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", measure, exe, "eval", "--checkpoint", str(tmp_path / "big.pt"),
                        "--data", str(small_run["store"]), "--out", str(tmp_path / "e")],
                       capture_output=True, text=True, timeout=300)
    code, peak_kib = (int(v) for v in r.stdout.split())
    peak_mib = peak_kib / 1024
    assert code == 7, r.stderr
    line = _one_line(r.stderr)
    assert "checkpoint does not describe its own weights: declares vit_test/" in line and "32768 px" in line
    assert peak_mib < 1500, f"{peak_mib:.0f} MiB"


def test_resuming_with_other_shapes_is_refused(small_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = yaml.safe_load(small_run["train"].read_text())
    cfg["dino"]["out_dim"] = cfg["dino"]["out_dim"] * 2
    cfg["optim"]["steps"] = 4
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    before = (small_run["run"] / "checkpoints" / "last.pt").read_bytes()
    code = main(["pretrain", "--config", str(tmp_path / "t.yaml"), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "holds a run with other shapes (dino.out_dim:" in line
    assert (small_run["run"] / "checkpoints" / "last.pt").read_bytes() == before


@pytest.mark.parametrize("setting", ["dino.local_size=-32", "msad.size=0", "dino.hidden_dim=-1",
                                     "data.size=100000"])
def test_sizes_out_of_range_in_set(setting: str, small_run: dict, capsys: pytest.CaptureFixture) -> None:
    code = main(["pretrain", "--config", str(small_run["train"]), "--quiet", "--set", setting])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and setting.split("=")[0].split(".")[1] in line, line


# --------------------------------------------------------------------------- hostile STAC APIs


class _Hostile(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _json(self, obj: object, drip: bool = False) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not drip:
            self.wfile.write(body)
            return
        for i in range(len(body)):  # one byte a second: every read arrives in time
            if self.server.owner.stop:  # type: ignore[attr-defined]
                return
            try:
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.5)

    def do_GET(self) -> None:
        srv = self.server.owner  # type: ignore[attr-defined]
        if self.path.rstrip("/") in ("", "/api"):
            self._json({"type": "Catalog", "id": "x", "description": "x", "stac_version": "1.0.0",
                        "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                       "https://api.stacspec.org/v1.0.0/item-search"],
                        "links": [{"rel": "search", "href": f"{srv.url}/search", "method": "POST",
                                   "type": "application/geo+json"},
                                  {"rel": "self", "href": f"{srv.url}/"}]})
            return
        self.do_POST()

    def do_POST(self) -> None:
        srv = self.server.owner  # type: ignore[attr-defined]
        srv.requests += 1
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        mode = srv.mode
        if mode == "drip":
            self._json({"type": "FeatureCollection", "features": []}, drip=True)
        elif mode == "loop":
            self._json({"type": "FeatureCollection", "features": [srv.item("again")],
                        "links": [{"rel": "next", "href": f"{srv.url}/search", "method": "POST", "body": {"page": 1}}]})
        elif mode == "endless":
            k = srv.requests
            self._json({"type": "FeatureCollection", "features": [srv.item(f"p{k}")],
                        "links": [{"rel": "next", "href": f"{srv.url}/search?page={k}", "method": "GET"}]})
        elif mode == "redirect":  # a search answered with a redirect to ``href``
            self.send_response(307)
            self.send_header("Location", srv.href)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "next-elsewhere":  # a next page on another host
            self._json({"type": "FeatureCollection", "features": [srv.item("p")],
                        "links": [{"rel": "next", "href": srv.href, "method": "GET"}]})
        elif mode == "dict-features":
            self._json({"type": "FeatureCollection", "features": {"a": 1}})
        elif mode == "many":
            feats = [srv.item(f"i{srv.requests}-{j}") for j in range(40)]
            self._json({"type": "FeatureCollection", "features": feats,
                        "links": [{"rel": "next", "href": f"{srv.url}/search?p={srv.requests}", "method": "GET"}]})
        else:
            self._json({"type": "FeatureCollection", "features": [srv.item("forged")]})


def s2_item(iid: str, href: str = "") -> dict:
    """A Sentinel-2 L2A item over the tiny region, every asset at ``href`` (or a public URL)."""
    geom = {"type": "Polygon", "coordinates": [[[1.2, 43.4], [1.5, 43.4], [1.5, 43.7], [1.2, 43.7], [1.2, 43.4]]]}
    assets = {k: {"href": href or f"https://example.org/{k}.tif"} for k in ("B02", "B03", "B04", "B08", "SCL")}
    return {"type": "Feature", "stac_version": "1.0.0", "id": iid, "geometry": geom, "bbox": [1.2, 43.4, 1.5, 43.7],
            "properties": {"datetime": "2021-06-14T10:00:00Z", "s2:processing_baseline": "03.01",
                           "eo:cloud_cover": 1.0}, "collection": "sentinel-2-l2a", "links": [], "assets": assets}


class HostileApi(_Server):
    def __init__(self, mode: str, href: str = "") -> None:
        super().__init__(_Hostile)
        self.mode, self.href, self.requests, self.stop = mode, href, 0, False

    def item(self, iid: str) -> dict:
        return s2_item(iid, self.href)

    def __exit__(self, *exc) -> None:
        self.stop = True
        super().__exit__(*exc)


def _source(url: str, **kw) -> StacApiSource:
    return StacApiSource(SourceSpec(type="stac-api", url=f"{url}/", collection="sentinel-2-l2a", timeout_s=3,
                                    max_retries=0, **kw))


@pytest.mark.timeout(60)
def test_dripping_server_hits_the_response_deadline() -> None:
    with HostileApi("drip") as api:
        t0 = time.monotonic()
        with pytest.raises(SourceError, match=r"took over 2 s for one response"):
            _source(api.url, response_deadline_s=2).search(QUERY)
        assert time.monotonic() - t0 < 10  # the per-read timeout (3 s) alone would wait for ever


@pytest.mark.timeout(60)
def test_next_link_pointing_back_is_a_loop() -> None:
    with HostileApi("loop") as api:
        with pytest.raises(SourceError, match="already followed"):
            _source(api.url).search(QUERY)
        assert api.requests <= 3


@pytest.mark.timeout(60)
def test_endless_paging_stops_at_max_pages() -> None:
    with HostileApi("endless") as api:
        with pytest.raises(SourceError, match=r"more than 5 pages \(source max_pages\)"):
            _source(api.url, max_pages=5).search(QUERY)
        assert api.requests <= 6


@pytest.mark.timeout(60)
def test_too_many_items_stop_at_max_items() -> None:
    with HostileApi("many") as api:
        with pytest.raises(SourceError, match=r"more than 100 items \(source max_items\)"):
            _source(api.url, max_items=100).search(QUERY)


@pytest.mark.timeout(60)
def test_features_that_are_not_a_list() -> None:
    with HostileApi("dict-features") as api:
        with pytest.raises(SourceError, match="no 'features' list"):
            _source(api.url).search(QUERY)


# --------------------------------------------------------------------------- forged hrefs


FORGED = {
    "loopback http": ("http://127.0.0.1:9/a.tif", "loopback or private address"),
    "private http": ("http://192.168.1.10/a.tif", "loopback or private address"),
    "vsicurl": ("/vsicurl/https://example.org/a.tif", "GDAL virtual file systems"),
    "vsizip": ("/vsizip//tmp/x.zip/a.tif", "GDAL virtual file systems"),
    "inline VRT": ("<VRTDataset rasterXSize='1'><SourceFilename>/etc/passwd</SourceFilename></VRTDataset>",
                   "inline XML"),
    "local path from an API": ("/etc/passwd", "local paths only come from local catalogs"),
    "file url from an API": ("file:///etc/passwd", "local paths only come from local catalogs"),
    "ftp scheme": ("ftp://example.org/a.tif", "scheme 'ftp'"),
}


@pytest.mark.parametrize("case", FORGED)
def test_forged_href_is_refused_before_any_read(case: str) -> None:
    from msc_france.config import load_catalog
    from msc_france.products import rules_for

    href, why = FORGED[case]
    spec = load_catalog("default").sensor("sentinel-2-l2a")
    item = s2_item("x", href)
    with pytest.raises(SourceError, match="refused asset href") as e:
        rules_for("sentinel-2-l2a").parse(spec, item)
    assert why in str(e.value)


# Spellings of loopback, private and link-local (cloud metadata) addresses that a string match
# misses; curl and the C library reach them all.
DISGUISED = ["127.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.0.0.1.", "localhost.", "LOCALHOST",
             "a.localhost", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "0.0.0.0", "0", "2852039166",
             "169.254.169.254", "10.1", "192.168.1", "172.16.0.1", "100.64.0.1", "[fe80::1]", "[fd00::1]",
             "224.0.0.1"]


@pytest.mark.parametrize("host", DISGUISED)
def test_disguised_private_addresses_are_refused(host: str) -> None:
    from msc_france.urls import check_href, check_url

    with pytest.raises(SourceError, match="loopback or private address"):
        check_href(f"http://{host}:8080/a.tif", local_ok=False)
    with pytest.raises(SourceError, match="loopback or private address"):
        check_url(f"https://{host}/catalog.json")


def test_names_resolving_to_private_addresses_are_refused() -> None:
    import socket

    from msc_france.urls import check_href, host_addresses

    name = socket.gethostname()
    addrs = host_addresses(name)
    if not addrs or any(a.is_global for a in addrs):
        pytest.skip(f"this machine's name {name} does not resolve to a private address only")
    with pytest.raises(SourceError, match="loopback or private address"):
        check_href(f"http://{name}:8080/a.tif", local_ok=False)
    assert check_href("https://8.8.8.8/a.tif", local_ok=False) == "https://8.8.8.8/a.tif"
    assert check_href("http://127.1/a.tif", local_ok=False, private_ok=True)  # the source's explicit opt-in


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["redirect", "next-elsewhere"])
def test_api_redirects_and_next_links_obey_the_policy(mode: str, tmp_path: Path) -> None:
    """The API's own host is the user's choice; a redirect or a next link to another private host is
    refused before it is requested.
    """
    with AssetServer(tmp_path) as victim:
        port = victim.url.rsplit(":", 1)[1]
        with HostileApi(mode, href=f"http://127.1:{port}/search") as api:
            with pytest.raises(SourceError, match=r"refused link http://127\.1:\d+/search: loopback or private"):
                _source(api.url).search(QUERY)
        assert victim.requests == []


def test_local_catalog_links_stay_local(tmp_path: Path) -> None:
    from msc_france.sources.static import load_items

    with AssetServer(tmp_path / "srv") as victim:
        root = tmp_path / "catalog.json"
        root.write_text(json.dumps({
            "type": "Catalog", "id": "c", "description": "c", "stac_version": "1.0.0",
            "links": [{"rel": "child", "href": f"{victim.url}/child.json", "type": "application/json"}]}))
        with pytest.raises(SourceError, match="a local catalog links only to local files"):
            load_items(root)
        assert victim.requests == []


def test_catalog_whose_links_form_a_cycle(tmp_path: Path) -> None:
    from msc_france.sources.static import load_items

    def cat(name: str, child: str) -> None:
        (tmp_path / name).write_text(json.dumps({
            "type": "Catalog", "id": name, "description": "c", "stac_version": "1.0.0",
            "links": [{"rel": "child", "href": f"./{child}", "type": "application/json"}]}))

    cat("a.json", "b.json")
    cat("b.json", "a.json")
    with pytest.raises(SourceError, match="child links form a cycle"):
        load_items(tmp_path / "a.json")


def test_allowed_hosts_policy() -> None:
    from msc_france.urls import check_href

    assert check_href("https://data.example.org/a.tif", local_ok=False, allowed_hosts=["example.org"])
    with pytest.raises(SourceError, match="not in the source's allowed_hosts"):
        check_href("https://evil.test/a.tif", local_ok=False, allowed_hosts=["example.org"])


def test_build_never_fetches_a_forged_loopback_href(tiny_region: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """End to end: an API pointing assets at a service on 127.0.0.1 gets no request from us."""
    with AssetServer(tmp_path) as victim, HostileApi("forged", href=f"{victim.url}/secret.tif") as api:
        cat = tmp_path / "cat"
        cat.mkdir()
        spec = one_provider_yaml("default", "sentinel-2-l2a")
        spec["source"].update(url=f"{api.url}/", signing="none", timeout_s=3, max_retries=0)
        (cat / "sentinel-2-l2a.yaml").write_text(yaml.safe_dump(spec))
        rec = yaml.safe_load((pipelines_dir() / "demo.yaml").read_text())
        rec.update(catalog=str(cat), chip_size_m=960, labels=None,
                   sensors={"sentinel-2-l2a": {"gsd": 10, "max_cloud_cover": 100}})
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
        code = main(["build", "--region", str(tiny_region), "--recipe", str(tmp_path / "r.yaml"), "--out",
                     str(tmp_path / "s.zarr"), "--quiet", "--no-cache"])
        cap = capsys.readouterr()
        assert code == 5 and _one_line(cap.err).startswith("error: 4 chip(s) failed"), cap.err
        assert "refused asset href" in cap.out and "loopback or private address" in cap.out
        failures = json.loads((tmp_path / "s.zarr" / "failures.json").read_text())
        assert failures["n"] == 4 and all("loopback or private address" in c["reason"] for c in failures["chips"])
        assert victim.requests == []


def test_relative_hrefs_resolve_against_the_catalog_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from msc_france.sources.static import load_items

    d = tmp_path / "cat"
    d.mkdir()
    item = s2_item("rel")
    for k, a in item["assets"].items():
        a["href"] = f"tiles/{k}.tif"
    (d / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    monkeypatch.chdir(tmp_path)  # a working directory elsewhere must not matter
    it = load_items(d / "items.json")[0]
    assert it.assets["B02"].href == str(d / "tiles" / "B02.tif")


# --------------------------------------------------------------------------- damaged stores


@pytest.fixture()
def store(tiny_store: Path, tmp_path: Path) -> Path:
    s = tmp_path / "store.zarr"
    shutil.copytree(tiny_store, s)
    return s


def _shard(store: Path, group: str = "sentinel-2-l2a", array: str = "image") -> Path:
    return store / group / array / "c" / "0" / "0" / "0" / "0"


def _validate(store: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["validate", str(store)])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return code, cap.out + cap.err


def test_garbage_index_is_corrupt(store: Path, capsys: pytest.CaptureFixture) -> None:
    (store / "index.parquet").write_bytes(b"garbage" * 100)
    code, out = _validate(store, capsys)
    assert code == 4 and "CORRUPT" in out and "index.parquet unreadable" in out


def test_index_out_of_step_with_arrays_is_corrupt(store: Path, capsys: pytest.CaptureFixture) -> None:
    import geopandas as gpd

    idx = gpd.read_parquet(store / "index.parquet")
    idx["chip_id"] = list(reversed(idx["chip_id"]))
    idx.to_parquet(store / "index.parquet")
    code, out = _validate(store, capsys)
    assert code == 4 and "does not match the arrays" in out


@pytest.mark.parametrize(("change", "said"), [
    ("short", "has 3 rows; the arrays hold 4 chips"),
    ("duplicate", "twice"),
    ("garbage", "index.parquet unreadable"),
])
def test_index_out_of_step_is_refused_by_every_reader(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      change: str, said: str) -> None:
    import geopandas as gpd
    import pandas as pd

    from msc_france.data import MSCFranceDataset

    idx = gpd.read_parquet(store / "index.parquet")
    if change == "short":
        idx.iloc[:-1].to_parquet(store / "index.parquet")
    elif change == "duplicate":
        gpd.GeoDataFrame(pd.concat([idx.iloc[:1], idx.iloc[:-1]]), crs=idx.crs).to_parquet(store / "index.parquet")
    else:
        (store / "index.parquet").write_bytes(b"PAR1" + b"\x00" * 200)
    with pytest.raises(StoreError, match=said):
        MSCFranceDataset(store, split=None)
    for cmd in (["export", str(store), "--format", "xstars-folders", "--out", str(tmp_path / "x")],
                ["preview", str(store), "--out", str(tmp_path / "p")]):
        code = main(cmd)
        line = _one_line(capsys.readouterr().err)
        assert code == 4 and said in line, (cmd, line)
    assert not (tmp_path / "x").exists()
    code, out = _validate(store, capsys)
    assert code == 4 and "CORRUPT" in out


def _every_reader_refuses(store: Path, group: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The dataset raises a StoreError naming ``group/image``; preview and export exit 4 saying so."""
    from msc_france.data import MSCFranceDataset

    ds = MSCFranceDataset(store, sensors=[group], split=None)
    with pytest.raises(StoreError, match=rf"chip \S+ of {group}/image"):
        for i in range(len(ds)):
            ds[i]
    for cmd in (["preview", str(store), "--out", str(tmp_path / "p"), "--chips", "4"],
                ["export", str(store), "--format", "xstars-folders", "--out", str(tmp_path / "x")]):
        code = main(cmd)
        line = _one_line(capsys.readouterr().err)
        assert code == 4 and f"{group}/image" in line, (cmd, line)


@pytest.mark.parametrize("damage", ["deleted", "flipped", "truncated"])
def test_damaged_shard_validate_and_every_reader(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 damage: str) -> None:
    shard = _shard(store)
    raw = bytearray(shard.read_bytes())
    if damage == "deleted":
        shard.unlink()
    elif damage == "flipped":
        for i in range(16, len(raw) - 64, 97):
            raw[i] ^= 0xFF
        shard.write_bytes(bytes(raw))
    else:
        shard.write_bytes(bytes(raw[: len(raw) // 3]))
    code, out = _validate(store, capsys)
    assert code == 4 and "CORRUPT" in out and "sentinel-2-l2a" in out
    # The dataset never returns fill for a built chip.
    _every_reader_refuses(store, "sentinel-2-l2a", tmp_path, capsys)


def test_one_flipped_byte_in_a_chunk_is_caught_by_every_reader(store: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """One byte flipped in the middle of each compressed aerial chunk: zstd alone often decodes such
    a chunk into wrong pixels; its frame checksum makes every reader refuse it.
    """
    import numpy as np

    shard = _shard(store, "aerial")
    raw = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(raw[-(2 * 16 + 4) : -4]), "<u8").reshape(2, 2)  # 2 chips per shard
    for off, nbytes in index:
        raw[int(off) + int(nbytes) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    from msc_france.store import ChipReader, Store

    with pytest.raises(StoreError, match=r"of aerial/image cannot be read from aerial/image/c/0"):
        ChipReader(Store.open(store)).read("aerial", "image", 0)
    _every_reader_refuses(store, "aerial", tmp_path, capsys)
    code, out = _validate(store, capsys)
    assert code == 4 and "aerial" in out


def test_truncated_array_metadata(store: Path, capsys: pytest.CaptureFixture) -> None:
    meta = store / "landsat-8-c2-l2" / "valid" / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    code, out = _validate(store, capsys)
    assert code == 4 and "landsat-8-c2-l2/valid: array metadata unreadable" in out
    from msc_france.data import MSCFranceDataset

    ds = MSCFranceDataset(store, sensors=["landsat-8-c2-l2"], split=None)
    with pytest.raises(StoreError, match="landsat-8-c2-l2/valid"):
        ds[0]
    code = main(["preview", str(store), "--out", str(store.parent / "p"), "--chips", "2"])
    line = _one_line(capsys.readouterr().err)
    assert code == 4 and "landsat-8-c2-l2/valid" in line and "internal error" not in line


def test_root_attributes_without_layers(store: Path, capsys: pytest.CaptureFixture) -> None:
    import zarr

    g = zarr.open_group(str(store), mode="r+")
    meta = dict(g.attrs["msc_france"])
    del meta["layers"]
    g.attrs["msc_france"] = meta
    for cmd in (["info", str(store)], ["validate", str(store)]):
        code = main(cmd)
        line = _one_line(capsys.readouterr().err)
        assert code == 4 and "root attributes lack layers" in line


def test_corrupt_done_mark_is_reported_and_a_rerun_repairs_it(store: Path, tiny_recipe: Path, tiny_region: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    mark = store / "_commits" / "shard-000000.json"
    mark.write_text("{not json")
    code, out = _validate(store, capsys)
    assert code == 4 and "corrupt done mark" in out and "run the same build again" in out
    assert main(["build", "--region", str(tiny_region), "--recipe", str(tiny_recipe), "--out", str(store),
                 "--quiet"]) == 0
    capsys.readouterr()
    code, out = _validate(store, capsys)
    assert code == 0, out


# --------------------------------------------------------------------------- names, secrets, listeners


@pytest.mark.parametrize(("stem", "rule"), [("..", "'..'"), ("a,b", "no commas"), ("a\x01b", "control characters")])
def test_dangerous_region_names(tmp_path: Path, tiny_recipe: Path, stem: str, rule: str,
                                capsys: pytest.CaptureFixture) -> None:
    from tests.conftest import TINY_REGION_L93

    p = write_region_file(tmp_path / "ok.gpkg", TINY_REGION_L93)
    bad = tmp_path / f"{stem}.gpkg"
    shutil.copy(p, bad)
    code = main(["plan", "--region", str(bad), "--recipe", str(tiny_recipe), "--out", str(tmp_path / "p.parquet")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "is not allowed" in line and rule in line


def test_credentials_are_redacted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.servers import free_port

    cat = tmp_path / "cat"
    cat.mkdir()
    spec = one_provider_yaml("default", "sentinel-2-l2a")
    spec["source"].update(url=f"http://alice:hunter2@127.0.0.1:{free_port()}/api?subscription-key=s3cr3t",
                          timeout_s=1, max_retries=0)
    (cat / "sentinel-2-l2a.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sensors", "--catalog", str(cat)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "s3cr3t" not in out and "***" in out
    with pytest.raises(SourceError) as e:
        StacApiSource(SourceSpec(**spec["source"])).search(QUERY)
    assert "hunter2" not in str(e.value) and "s3cr3t" not in str(e.value)


def test_local_build_opens_no_listener() -> None:
    from msc_france.builder.scheduler import dask_client

    with dask_client(None, 2):
        out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    assert f"pid={os.getpid()}," not in out


# --------------------------------------------------------------------------- disk full, recipes, datasets


def test_full_disk_while_checkpointing(small_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(small)],
                      capture_output=True).returncode:
        pytest.skip("this machine does not allow tmpfs mounts")
    try:
        code = main(["pretrain", "--config", str(small_run["train"]), "--out", str(small / "run"), "--quiet"])
        line = _one_line(capsys.readouterr().err)
        assert code == 4 and "No space left on device" in line
        assert not [p for p in small.rglob("*") if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(small)])


def test_append_with_other_rules_is_refused(store: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    rec = yaml.safe_load(tiny_recipe.read_text())
    rec["split"]["salt"] = "other"
    rec["sensors"]["sentinel-2-l2a"]["min_valid_fraction"] = 0.5
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    code = main(["build", "--region", str(tiny_region), "--recipe", str(tmp_path / "r.yaml"), "--out", str(store),
                 "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "built with other rules" in line
    assert "split.salt: 'msc-france' -> 'other'" in line and "sensors.sentinel-2-l2a.min_valid_fraction" in line
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("chips_per_shard", 4, "chips_per_shard: 2 -> 4"),  # the shard layout of the arrays
    ("sensors.aerial.overviews", [2, 5], "sensors.aerial.overviews: [5] -> [2, 5]"),  # the overview arrays
])
def test_append_with_another_layout_is_refused(store: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture, key: str, value: object,
                                               shown: str) -> None:
    rec = yaml.safe_load(tiny_recipe.read_text())
    *path, last = key.split(".")
    d = rec
    for k in path:
        d = d[k]
    d[last] = value
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    code = main(["build", "--region", str(tiny_region), "--recipe", str(tmp_path / "r.yaml"), "--out", str(store),
                 "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "built with other rules" in line and shown in line
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == before


def test_duplicate_yaml_keys_are_refused(tiny_recipe: Path, tiny_region: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    text = tiny_recipe.read_text()
    assert "\n  aerial:\n" in text
    twice = text.replace("\n  aerial:\n", "\n  aerial:\n    gsd: 3.0\n  aerial:\n", 1)
    (tmp_path / "twice.yaml").write_text(twice)
    code = main(["build", "--region", str(tiny_region), "--recipe", str(tmp_path / "twice.yaml"),
                 "--out", str(tmp_path / "s.zarr"), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "duplicate key 'aerial'" in line and "twice.yaml" in line
    assert not (tmp_path / "s.zarr").exists()
    cfg = tmp_path / "train.yaml"
    cfg.write_text("name: a\nname: b\n")
    code = main(["pretrain", "--config", str(cfg), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "duplicate key 'name'" in line


@pytest.mark.parametrize("cmd", [
    ["index", "{store}", "--out", "{store}/index.parquet"],
    ["preview", "{store}", "--out", "{store}/previews"],
    ["export", "{store}", "--format", "xstars-folders", "--out", "{store}"],
    ["export", "{store}", "--format", "xstars-folders", "--out", "{store}/aerial/x"],
    ["catalog", "ingest", "{tmp}", "--out", "{store}/catalog"],
    ["plan", "--region", "{region}", "--recipe", "{recipe}", "--out", "{store}/index.parquet"],
])
def test_nothing_writes_into_a_store_but_the_store(store: Path, tmp_path: Path, tiny_region: Path, tiny_recipe: Path,
                                                   capsys: pytest.CaptureFixture, cmd: list[str]) -> None:
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    args = [a.format(store=store, tmp=tmp_path, region=tiny_region, recipe=tiny_recipe) for a in cmd]
    code = main(args)
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "the Zarr store" in line and "nothing is written into a store" in line
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before


def test_external_dataset_symlink_out_of_root(tmp_path: Path) -> None:
    from msc_france.errors import BadInputError
    from msc_france.eval.external import load_classification

    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    from PIL import Image

    for c in ("a", "b"):
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(root / c / f"{i}.png")
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(secret)
    (root / "a" / "link.png").symlink_to(secret)
    with pytest.raises(BadInputError, match="points outside the dataset root"):
        load_classification("ucmerced", root, 8, ["red", "green", "blue"])
    (root / "a" / "link.png").unlink()
    (root / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match=r"cannot read image .*broken.png"):
        load_classification("ucmerced", root, 8, ["red", "green", "blue"])


@pytest.mark.parametrize(("extra", "said"), [
    (["--out", "{file}"], "is a file, not a store directory"),
    (["--out", "{store}/inner.zarr"], "is inside the Zarr store"),
    (["--out", "{tmp}/s.zarr", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach dask scheduler"),
])
def test_cheap_checks_come_before_any_search(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             extra: list[str], said: str) -> None:
    """Against the default catalog (Planetary Computer, unreachable here), a search would fail with a
    source error (exit 3): exit 2 with the output's or the scheduler's problem shows they came first.
    """
    (tmp_path / "f").write_text("a file")
    args = [a.format(file=tmp_path / "f", store=store, tmp=tmp_path) for a in extra]
    code = main(["build", "--region", "5.0,45.0,5.01,45.01", "--catalog", "default", *args, "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and said in line


def test_remote_static_catalog_cannot_name_local_files() -> None:
    from msc_france.config import load_catalog
    from msc_france.products import rules_for

    spec = load_catalog("default").sensor("sentinel-2-l2a")
    remote = spec.model_copy(update={"sources": [SourceSpec(type="static", collection="sentinel-2-l2a",
                                                            path="https://example.org/catalog.json")]})
    local = spec.model_copy(update={"sources": [SourceSpec(type="static", collection="sentinel-2-l2a",
                                                           path="/data/catalog.json")]})
    with pytest.raises(SourceError, match="local paths only come from local catalogs"):
        rules_for("sentinel-2-l2a").parse(remote, s2_item("x", "/etc/passwd"))
    assert rules_for("sentinel-2-l2a").parse(local, s2_item("x", "/data/b.tif"))
