"""`make bench --quick` runs every benchmark end to end (figures are reported, not asserted)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.run import main


def test_quick_benchmarks_run(tiny_store: Path, tiny_recipe: Path, tiny_region: Path, tmp_path: Path,
                              capsys) -> None:  # noqa: ANN001
    rc = main(["--quick", "--store", str(tiny_store), "--out", str(tmp_path), "--doc", str(tmp_path / "b.md"),
               "--recipe", str(tiny_recipe), "--region", str(tiny_region)])
    assert rc == 0
    printed = capsys.readouterr().out
    # Each section says it started and ended.
    for section in ("msad", "loader", "loader-paper", "training", "gpu", "build", "readers", "network", "plan",
                    "wms"):
        assert re.search(rf"bench {section}: started\n(.*\n)*?bench {section}: \d+ row\(s\) in \d+ s\n", printed)
    res = json.loads((tmp_path / "quick.json").read_text())
    names = [r["name"] for r in res["rows"]]
    assert len(names) >= 15 and any("MSAD" in n for n in names) and any("RSS" in n for n in names)
    assert any("odc-stac" in n for n in names) and any("of France" in n for n in names) and any("configured" in n for n in names)
    assert any("per shard over HTTP" in n for n in names) and any("ms per request" in n for n in names)
    for r in res["rows"]:
        assert r["figure"] > 0 or "overhead" in r["name"]
        assert r["baseline"] is None or r["baseline"] > 0
        assert {"target", "met", "unit"} <= set(r)
    table = (tmp_path / "b.md").read_text()
    assert "| benchmark | ours | baseline | ratio | target | met |" in table and "QUICK" in table


def test_a_subset_of_sections_and_unknown_names(tiny_store: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    rc = main(["--quick", "--store", str(tiny_store), "--out", str(tmp_path), "--doc", str(tmp_path / "b.md"),
               "--only", "msad"])
    assert rc == 0
    rows = json.loads((tmp_path / "quick.json").read_text())["rows"]
    assert rows and all("MSAD" in r["name"] for r in rows)
    assert "bench loader" not in capsys.readouterr().out
    assert main(["--quick", "--store", str(tiny_store), "--only", "gpu-fast"]) == 2
    assert "unknown benchmark section(s) gpu-fast" in capsys.readouterr().err


def test_a_subset_keeps_the_rows_of_the_other_sections(tiny_store: Path, tmp_path: Path) -> None:
    old = {"rows": [{"name": "plan all of France, wall time", "figure": 40.8, "unit": "s", "baseline": None,
                     "baseline_name": "", "ratio": None, "target": "< 120 s", "met": True, "note": ""},
                    {"name": "MSAD forward+backward, vectorised vs per-position loop", "figure": 1.0, "unit": "x",
                     "baseline": 1.0, "baseline_name": "", "ratio": 1.0, "target": ">= 20x", "met": False,
                     "note": "stale"}], "details": {"plan_france": {"chips": 1}}}
    (tmp_path / "quick.json").write_text(json.dumps(old))
    assert main(["--quick", "--store", str(tiny_store), "--out", str(tmp_path), "--doc", str(tmp_path / "b.md"),
                 "--only", "msad"]) == 0
    res = json.loads((tmp_path / "quick.json").read_text())
    names = [r["name"] for r in res["rows"]]
    assert names.count("MSAD forward+backward, vectorised vs per-position loop") == 1  # replaced, not doubled
    assert all(r["note"] != "stale" for r in res["rows"])
    assert names[-1] == "plan all of France, wall time" and res["details"]["plan_france"] == {"chips": 1}
    table = (tmp_path / "b.md").read_text()
    assert "before 2026-12" in table  # the kept row says it is older


def test_the_dialable_server_delays_and_counts_what_the_client_sees(tmp_path: Path) -> None:
    """The benchmarks' range server: 100 ms before each answer and a 1 MB/s cap make a 100 kB range
    take at least 0.2 s on the client's clock; the server counts the bytes the client received, and
    its own log of the request fits inside the client's timing.
    """
    import os
    import time

    import requests

    from benchmarks.readers import CountingServer

    (tmp_path / "f.bin").write_bytes(os.urandom(300_000))
    srv = CountingServer(tmp_path, latency_s=0.1, bandwidth_bps=1_000_000)
    try:
        t0 = time.perf_counter()
        r = requests.get(f"{srv.url}/f.bin", headers={"Range": "bytes=1000-100999"}, timeout=10)
        elapsed = time.perf_counter() - t0
    finally:
        srv.close()
    assert r.status_code == 206 and r.content == (tmp_path / "f.bin").read_bytes()[1000:101000]
    assert (srv.requests, srv.bytes) == (1, 100_000)
    start, end, sent = srv.log[0]
    assert sent == 100_000
    assert elapsed >= 0.1 + 0.1 * 0.95 and end - start >= 0.1 + 0.1 * 0.95
    assert end - start <= elapsed
