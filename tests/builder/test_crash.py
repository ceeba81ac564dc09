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
