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
