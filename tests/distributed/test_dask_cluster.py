"""Builds on a separately started dask.distributed cluster (a scheduler and two workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from msc_france.cli import main
from tests.conftest import tree_hashes
from tests.servers import free_port

DASK = str(Path(sys.executable).parent / "dask")


@pytest.fixture()
def cluster(tmp_path: Path):
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    sched = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    workers = [subprocess.Popen([DASK, "worker", addr, "--nthreads", "1", "--nworkers", "1", "--name", f"w{i}",
                                 "--no-dashboard", "--local-directory", str(tmp_path / f"w{i}")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
               for i in range(2)]
    from distributed import Client

    deadline = time.monotonic() + 60
    while True:
        try:
            with Client(addr, timeout="2s") as c:
                if len(c.scheduler_info()["workers"]) == 2:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("dask cluster did not start")
        time.sleep(0.2)
    yield addr, workers
    for p in [*workers, sched]:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def _workers_used(store: Path) -> set[str]:
    out = set()
    for f in (store / "_commits").glob("shard-*.json"):
        out |= {rec["worker"] for rec in json.loads(f.read_text())["chips"].values()}
    return out


@pytest.mark.timeout(300)
def test_cluster_build_equals_local_build(cluster, tiny_store: Path, one_chip_shards: Path, tiny_region: Path,
                                          tmp_path: Path) -> None:
    addr, _ = cluster
    out = tmp_path / "dist.zarr"
    assert main(["build", "--region", str(tiny_region), "--recipe", str(one_chip_shards), "--out", str(out),
                 "--scheduler", addr, "--quiet"]) == 0
    assert tree_hashes(out) == tree_hashes(tiny_store)  # sharding differs, content does not
    assert _workers_used(out) == {"w0", "w1"}  # the work was spread over both workers


@pytest.mark.timeout(300)
def test_worker_killed_mid_build(cluster, tiny_store: Path, one_chip_shards: Path, tiny_region: Path,
                                 tmp_path: Path) -> None:
    addr, workers = cluster
    out = tmp_path / "killed.zarr"
    result: dict[str, int] = {}

    def run() -> None:
        result["code"] = main(["build", "--region", str(tiny_region), "--recipe", str(one_chip_shards),
                               "--out", str(out), "--scheduler", addr, "--quiet"])

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "_commits").exists():
        time.sleep(0.01)
    os.killpg(workers[0].pid, signal.SIGKILL)  # one worker dies mid-build
    t.join(240)
    if result.get("code") != 0:  # whatever was lost is recorded, and a rerun completes it
        assert main(["build", "--region", str(tiny_region), "--recipe", str(one_chip_shards), "--out", str(out),
                     "--scheduler", addr, "--quiet", "--retry-failed"]) == 0
    assert main(["validate", str(out)]) == 0
    assert tree_hashes(out) == tree_hashes(tiny_store)
