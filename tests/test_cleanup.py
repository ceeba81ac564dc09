"""`make clean-demo` removes only what msc-france made: never a user's folder, whatever the variables say."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from msc_france.cleanup import main

REPO = Path(__file__).resolve().parents[1]


def test_removes_the_demo_store_previews_and_marked_cache(tiny_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "my demo.zarr"  # a space: one path, not two
    shutil.copytree(tiny_store, store)
    (tmp_path / "my").mkdir()  # what a split path would have hit
    preview = tmp_path / "preview"
    preview.mkdir()
    (preview / "chips.png").write_bytes(b"png")
    cache = tmp_path / "cache"
    (cache / "demo" / "0123456789abcdef").mkdir(parents=True)
    (cache / "demo" / ".msc-france-demo-cache").touch()
    assert main(["--store", str(store), "--preview", str(preview), "--cache", str(cache)]) == 0
    assert not store.exists() and not preview.exists() and not (cache / "demo").exists()
    assert (tmp_path / "my").exists() and cache.exists()


def test_leaves_what_it_did_not_make(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    (home / "demo").mkdir(parents=True)
    (home / "demo" / "thesis.tex").write_text("mine")  # MSC_FRANCE_CACHE=$HOME: ~/demo is the user's
    folder = tmp_path / "data.zarr"
    folder.mkdir()
    (folder / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')  # not ours
    preview = tmp_path / "preview"
    preview.mkdir()
    (preview / "holiday.jpg").write_bytes(b"jpg")
    assert main(["--store", str(folder), "--preview", str(preview), "--cache", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.count("not removed") == 3
    assert (home / "demo" / "thesis.tex").exists() and (folder / "zarr.json").exists()
    assert (preview / "holiday.jpg").exists()


def test_make_clean_demo_with_cache_in_home(tmp_path: Path) -> None:
    """The Makefile target itself, with MSC_FRANCE_CACHE=$HOME and a store path with a space."""
    home = tmp_path / "home"
    (home / "demo").mkdir(parents=True)
    (home / "demo" / "keep.txt").write_text("mine")
    (tmp_path / "a").mkdir()
    env = {**os.environ, "MSC_FRANCE_CACHE": str(home), "HOME": str(home)}
    p = subprocess.run(["make", "-s", "clean-demo", f"DEMO_STORE={tmp_path / 'a b.zarr'}",
                        f"DEMO_PREVIEW={tmp_path / 'preview'}", "VENV=" + str(REPO / ".venv")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "not removed" in p.stderr
    assert (home / "demo" / "keep.txt").exists() and (tmp_path / "a").exists()
