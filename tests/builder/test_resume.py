"""Resume after a SIGKILLed build, and process-based dask clusters giving the same content."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msc_france.cli import main
from msc_france.errors import StoreError
from tests.conftest import tree_hashes


def _build_cmd(region: Path, recipe: Path, out: Path, *extra: str) -> list[str]:
    exe = Path(sys.executable).parent / "msc-france"
    return [str(exe), "build", "--region", str(region), "--recipe", str(recipe), "--out", str(out),
            "--workers", "1", "--quiet", *extra]


def test_resume_after_sigkill(tiny_world: Path, one_chip_shards: Path, tiny_region: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    ref = tmp_path / "ref.zarr"
    assert main(_build_cmd(tiny_region, one_chip_shards, ref)[1:]) == 0
    out = tmp_path / "killed.zarr"
    env = {**os.environ, "MSC_FRANCE_CACHE": os.environ["MSC_FRANCE_CACHE"]}
    proc = subprocess.Popen(_build_cmd(tiny_region, one_chip_shards, out), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    commits = out / "_commits"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (commits.exists() and any(commits.glob("shard-*.json"))):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the build and its dask threads, mid-build
    proc.wait()
    n_done = len(list(commits.glob("shard-*.json")))
    assert 1 <= n_done < 4, "the build finished before it could be killed"
    capsys.readouterr()
    assert main(["validate", str(out)]) == StoreError.exit_code
    captured = capsys.readouterr()
    assert "INCOMPLETE" in captured.out and "CORRUPT" not in captured.out
    assert "incomplete" in captured.err
    assert main(_build_cmd(tiny_region, one_chip_shards, out)[1:]) == 0
    assert f"skipped {n_done} already done" in capsys.readouterr().out
    assert main(["validate", str(out)]) == 0
    assert tree_hashes(out) == tree_hashes(ref)


def test_process_cluster_gives_the_same_content(tiny_store: Path, tiny_recipe: Path, tiny_region: Path,
                                                tmp_path: Path) -> None:
    out = tmp_path / "procs.zarr"
    assert main(["build", "--region", str(tiny_region), "--recipe", str(tiny_recipe), "--out", str(out),
                 "--scheduler", "processes", "--workers", "2", "--quiet"]) == 0
    assert tree_hashes(out) == tree_hashes(tiny_store)


def test_rebuild_removes_what_killed_writes_left(tiny_store: Path, tiny_recipe: Path, tiny_region: Path,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A writer killed between its write and its rename leaves a temporary file: zarr's LocalStore
    # names it ``<name>.<uuid hex>.partial``, our atomic writes ``.<name>.<pid>.tmp``.
    out = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, out)
    zarr_tmp = out / "zarr.0123456789abcdef0123456789abcdef.partial"
    ours = out / "_commits" / ".shard-00000.json.4242.tmp"
    user = out / "notes.partial"  # not a temporary-file name: never reported nor removed
    for p in (zarr_tmp, ours, user):
        p.write_bytes(b"half")
    capsys.readouterr()
    assert main(["validate", str(out)]) == StoreError.exit_code
    assert "INCOMPLETE: 2 partial file(s) from an interrupted write" in capsys.readouterr().out
    assert main(["build", "--region", str(tiny_region), "--recipe", str(tiny_recipe), "--out", str(out),
                 "--workers", "1", "--quiet"]) == 0
    assert not zarr_tmp.exists() and not ours.exists() and user.read_bytes() == b"half"
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0
