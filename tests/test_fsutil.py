"""The output policy's folder claim: a failed command leaves no folder it made, and never touches
one it did not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msc_france.cli import main
from msc_france.fsutil import OUTPUT_MARKER, output_dir


def test_a_failed_body_removes_only_the_folder_it_made(tmp_path: Path) -> None:
    new = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError), output_dir(new, "eval"):
        (new / "report.md").write_text("half")
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()  # the parent it made too
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError), output_dir(kept, "eval"):
        raise RuntimeError("boom")
    assert kept.is_dir() and (kept / OUTPUT_MARKER).read_text() == "eval\n"
    with output_dir(tmp_path / "ok", "eval") as d:
        (d / "report.md").write_text("done")
    assert (tmp_path / "ok" / "report.md").read_text() == "done"


def test_eval_of_a_missing_checkpoint_leaves_no_report_folder(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                              tiny_store: Path) -> None:
    out = tmp_path / "report"
    code = main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tiny_store), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint not found" in err and err.count("\n") == 1
    assert not out.exists()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind, names", [
    ("export-model", ["README.md", "config.json", "model.safetensors"]),  # a model repository checkout
    ("card", ["card.md"]),
    ("eval", ["report.md", "summary.json"]),
    ("preview", ["chips.png"]),
    ("export", ["Sentinel-2"]),
    ("pretrain", ["config.yaml", "log.jsonl"]),
])
def test_a_folder_of_files_named_like_the_output_is_still_the_users(tmp_path: Path, kind: str,
                                                                      names: list[str]) -> None:
    """Files whose names a command would write, without the command's marker: refused in one line,
    naming them, before any work; every byte left as it was.
    """
    from msc_france.errors import BadInputError
    from msc_france.xstars.train import check_run_dir

    out = tmp_path / "mine"
    out.mkdir()
    for i, n in enumerate(names):
        (out / n).write_text(f"# the user's own {n} #{i}\n")
    before = _tree(out)
    with pytest.raises(BadInputError) as e:
        if kind == "pretrain":
            check_run_dir(out)
        else:
            with output_dir(out, kind):
                raise AssertionError("the body ran")
    assert "did not write" in str(e.value) and names[0] in str(e.value) and "\n" not in str(e.value)
    assert _tree(out) == before and not (out / OUTPUT_MARKER).exists()


def test_output_folder_and_marker_that_are_links_are_refused(tmp_path: Path) -> None:
    from msc_france.errors import BadInputError

    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(BadInputError, match="is a symbolic link, not a folder"), output_dir(tmp_path / "link", "card"):
        pass
    d = tmp_path / "d"
    d.mkdir()
    (d / OUTPUT_MARKER).symlink_to(tmp_path / "elsewhere" / "x")
    with pytest.raises(BadInputError, match="is not a regular file"), output_dir(d, "card"):
        pass
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("special", ["symlink", "fifo"])
def test_a_lock_file_that_is_not_a_regular_file_is_refused_untouched(tmp_path: Path, special: str) -> None:
    """A run directory's ``.run.lock`` (or a store's) that is a link or a FIFO: refused in one line;
    the link's target keeps its bytes (opening it for writing would have emptied it).
    """
    import os

    from msc_france.errors import BadInputError
    from msc_france.fsutil import exclusive_lock

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    lock = tmp_path / ".run.lock"
    if special == "symlink":
        lock.symlink_to(victim)
    else:
        os.mkfifo(lock)
    with pytest.raises(BadInputError, match="lock file .* (cannot be opened as a regular file|is not a regular file)"), \
            exclusive_lock(lock, lambda holder: RuntimeError(holder)):
        pass
    assert victim.read_text() == "keep me\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("special", ["fifo", "device", "directory"])
def test_special_files_given_as_model_files_are_refused_at_once(tmp_path: Path, special: str, tiny_store: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """A FIFO, a device or a directory where a checkpoint or weights file is read (eval, export-model,
    continual import): one line, exit 2, never a read that blocks or never ends.
    """
    import os

    from msc_france.xstars.weights import read_state

    path = tmp_path / "model.pt"
    if special == "fifo":
        os.mkfifo(path)
    elif special == "device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    what = {"fifo": "is a FIFO", "device": "is a device", "directory": "is a directory"}[special]
    for args in (["eval", "--checkpoint", str(path), "--data", str(tiny_store), "--out", str(tmp_path / "r")],
                 ["export-model", str(path), "--out", str(tmp_path / "x")]):
        if special == "directory" and args[0] == "export-model":
            continue  # a run directory is export-model's input: it reads RUN/checkpoints/last.pt
        assert main(args) == 2
        err = capsys.readouterr().err
        assert what in err and err.count("\n") == 1
    from msc_france.errors import BadInputError

    with pytest.raises(BadInputError, match=what):
        read_state(path)
    assert not (tmp_path / "r").exists() and not (tmp_path / "x").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["zarr.json", "sentinel-2-l2a/zarr.json", "aerial/image/zarr.json", "index.parquet"])
def test_a_store_whose_metadata_is_a_fifo_is_refused_at_once(tmp_path: Path, tiny_store: Path, where: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    import os
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, store)
    (store / where).unlink()
    os.mkfifo(store / where)
    for args in (["card", str(store), "--out", str(tmp_path / "card")], ["info", str(store)]):
        assert main(args) == 4
        err = capsys.readouterr().err
        assert f"{where} is not a regular file" in err and err.count("\n") == 1
    assert not (tmp_path / "card").exists()
