"""Crash safety: SIGKILL builds and pretraining at random points; nothing is ever corrupt, and the
next run completes with exactly the content (or loss sequence) of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from msc_france.cli import main
from msc_france.errors import StoreError
from tests.conftest import tree_hashes

EXE = str(Path(sys.executable).parent / "msc-france")


def _kill_after(cmd: list[str], started: Path, delay: float) -> bool:
    """Run ``cmd``; once ``started`` exists, SIGKILL its process group ``delay`` s later.
    Returns True if it was still running then.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not started.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


@pytest.mark.timeout(900)
def test_ten_random_sigkills_during_builds(tiny_world: Path, one_chip_shards: Path, tiny_region: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    args = ["build", "--region", str(tiny_region), "--recipe", str(one_chip_shards), "--workers", "1", "--quiet"]
    ref = tmp_path / "ref.zarr"
    t0 = time.perf_counter()
    assert main(args + ["--out", str(ref)]) == 0
    duration = time.perf_counter() - t0
    expected = tree_hashes(ref)
    rng = random.Random(20261121)
    interrupted = 0
    for trial in range(10):
        out = tmp_path / f"t{trial}.zarr"
        # Kill at a random point once the store exists: registering chips, a shard write, a commit,
        # consolidation (trial 0 kills at once: during creation and registration).
        delay = 0.0 if trial == 0 else rng.uniform(0.0, 0.6 * duration)
        killed = _kill_after([EXE, *args, "--out", str(out)], out / "zarr.json", delay)
        capsys.readouterr()
        if killed and out.exists() and (out / "zarr.json").exists():
            interrupted += 1
            code = main(["validate", str(out)])
            report = capsys.readouterr()
            assert "CORRUPT" not in report.out, report.out
            if code != 0:
                assert code == StoreError.exit_code and "INCOMPLETE" in report.out
        assert main(args + ["--out", str(out)]) == 0
        capsys.readouterr()
        assert main(["validate", str(out)]) == 0
        capsys.readouterr()
        assert tree_hashes(out) == expected, f"trial {trial}"
    assert interrupted >= 7, f"only {interrupted} of 10 trials were killed mid-build"


def _train_cfg(store: Path, out: Path) -> dict:
    from tests.helpers import train_config as _cfg

    cfg = _cfg(store, out, optim__steps=12, run__checkpoint_every=3).model_dump(mode="json")
    cfg["data"]["num_workers"] = 0
    return cfg


@pytest.mark.timeout(600)
def test_sigkill_during_pretraining_resumes_exactly(tiny_store: Path, tmp_path: Path) -> None:
    from msc_france.xstars.config import TrainConfig
    from msc_france.xstars.train import pretrain

    ref = pretrain(TrainConfig.model_validate(_train_cfg(tiny_store, tmp_path / "ref")))
    run = tmp_path / "killed"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_train_cfg(tiny_store, run)))
    cmd = [EXE, "pretrain", "--config", str(cfg_path), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (run / "checkpoints" / "ckpt-000006.pt").exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.pt"))
    assert "ckpt-000012.pt" not in done, "training finished before it could be killed"
    assert main(["pretrain", "--config", str(cfg_path), "--quiet"]) == 0
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(12))
    assert [r["loss"] for r in rows] == ref.losses  # the sequence continues exactly


def _halves(tiny_region: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny region's west column of chips, and the whole region (the east column appended)."""
    from tests.conftest import TINY_REGION_L93, write_region_file

    x0, y0, x1, y1 = TINY_REGION_L93
    return write_region_file(tmp_path / "west.gpkg", (x0, y0, (x0 + x1) / 2, y1)), tiny_region


@pytest.mark.timeout(600)
def test_readers_see_the_last_consistent_store_while_an_append_runs(tiny_world: Path, one_chip_shards: Path,
                                                                    tiny_region: Path, tmp_path: Path) -> None:
    """A reader looping over Store.open, the index and a sample while another process appends a region:
    never an error; it sees the chips the index lists (the old ones, then all of them).
    """
    from msc_france.data import MSCFranceDataset
    from msc_france.store import Store

    west, whole = _halves(tiny_region, tmp_path)
    out = tmp_path / "s.zarr"
    base = ["build", "--recipe", str(one_chip_shards), "--workers", "1", "--quiet", "--out", str(out)]
    assert main([*base, "--region", str(west)]) == 0
    proc = subprocess.Popen([EXE, *base, "--region", str(whole)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors: list[str] = []
    sizes: set[int] = set()
    rounds = 0
    while proc.poll() is None or rounds < 5:
        rounds += 1
        try:
            st = Store.open(str(out))
            idx = st.index()
            ds = MSCFranceDataset(out, sensors=["sentinel-2-l2a"], split=None, statuses=("ok", "flagged"))
            if len(ds):
                ds[len(ds) - 1]
            sizes.add(len(idx))
        except Exception as e:  # noqa: BLE001 (any failure is what the test counts)
            errors.append(f"{type(e).__name__}: {e}")
        if rounds > 2000:
            break
    assert proc.wait() == 0, proc.stderr.read().decode()[-300:] if proc.stderr else ""
    assert not errors, f"{len(errors)} of {rounds} rounds failed, e.g. {errors[0]}"
    assert rounds >= 10 and sizes <= {2, 4} and 4 in sizes


@pytest.mark.timeout(900)
def test_sigkill_during_an_append_is_incomplete_never_corrupt(tiny_world: Path, one_chip_shards: Path,
                                                              tiny_region: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """SIGKILL at random points of an append: `validate` says INCOMPLETE (run the build again), never
    CORRUPT; the next build completes the store with exactly the bytes of an uninterrupted append.
    """
    west, whole = _halves(tiny_region, tmp_path)
    base = ["build", "--recipe", str(one_chip_shards), "--workers", "1", "--quiet"]
    ref = tmp_path / "ref.zarr"
    assert main([*base, "--out", str(ref), "--region", str(west)]) == 0
    t0 = time.perf_counter()
    assert main([*base, "--out", str(ref), "--region", str(whole)]) == 0
    duration = time.perf_counter() - t0
    expected = tree_hashes(ref)
    rng = random.Random(20261207)
    killed_mid = 0
    for trial in range(5):
        out = tmp_path / f"t{trial}.zarr"
        assert main([*base, "--out", str(out), "--region", str(west)]) == 0
        started = out / "_regions.json"  # rewritten by the append's registration
        before = started.stat().st_mtime_ns
        delay = rng.uniform(0.0, 0.8 * duration)
        proc = subprocess.Popen([EXE, *base, "--out", str(out), "--region", str(whole)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(min(1.0, delay))
        t_end = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < t_end and started.stat().st_mtime_ns == before:
            time.sleep(0.005)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_mid += 1
        capsys.readouterr()
        code = main(["validate", str(out)])
        report = capsys.readouterr()
        assert "CORRUPT" not in report.out, report.out
        if code != 0:
            assert code == StoreError.exit_code and "INCOMPLETE" in report.out
        assert main([*base, "--out", str(out), "--region", str(whole)]) == 0
        capsys.readouterr()
        assert main(["validate", str(out)]) == 0
        capsys.readouterr()
        assert tree_hashes(out) == expected, f"trial {trial}"
    assert killed_mid >= 3, f"only {killed_mid} of 5 appends were killed before they finished"
