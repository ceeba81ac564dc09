"""``make clean-demo``: remove the demo store, its previews and the demo-world cache, and only them.

Each path is removed only when it is what msc-france made there: a store whose ``zarr.json``
carries the ``msc_france`` attributes, a preview folder holding only the previews ``preview``
writes, a demo cache carrying its marker (``.msc-france-demo-cache``; caches made before the
marker are recognised by their layout: world folders with a ``truth.json`` and their lock
files). Anything else is left in place and named, with exit status 2.

    python -m msc_france.cleanup --store data/demo.zarr --preview data/demo-preview --world
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from msc_france.paths import cache_dir
from msc_france.sources.demo_world import CACHE_MARKER

PREVIEW_FILES = frozenset({"chips.png", "footprints.png"})
_WORLD = re.compile(r"^\.?[0-9a-f]{16}(\.lock|-\w+)?$")


def is_store(path: Path) -> bool:
    """Whether ``path`` is an msc-france store (its root ``zarr.json`` has the project's attributes)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "msc_france" in meta.get("attributes", {})


def is_preview(path: Path) -> bool:
    """Whether ``path`` holds only what ``msc-france preview`` writes."""
    names = {p.name for p in path.iterdir()}
    return bool(names) and names <= PREVIEW_FILES


def is_demo_cache(path: Path) -> bool:
    """Whether ``path`` is the demo-world cache (marked, or laid out as the generator lays it out)."""
    if (path / CACHE_MARKER).exists():
        return True
    entries = list(path.iterdir())
    return bool(entries) and all(_WORLD.match(p.name) and (p.name.endswith(".lock") or (p / "truth.json").exists()
                                                           or p.name.startswith(".")) for p in entries)


def clean(targets: list[tuple[Path, str]]) -> list[str]:
    """Remove each existing path that passes its check; return a line per path left in place."""
    checks = {"store": is_store, "preview": is_preview, "cache": is_demo_cache}
    refused = []
    for path, kind in targets:
        if not path.exists():
            continue
        if path.is_symlink() or not path.is_dir() or not checks[kind](path):
            refused.append(f"not removed: {path} is not msc-france's demo {kind}")
            continue
        shutil.rmtree(path)
        print(f"removed {path}")
    return refused


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m msc_france.cleanup``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--preview", type=Path)
    ap.add_argument("--world", action="store_true", help="the demo world in the cache directory "
                    "($MSC_FRANCE_CACHE, else $XDG_CACHE_HOME/msc-france): its demo/ folder")
    ap.add_argument("--cache", type=Path, help="another cache directory (its demo/ folder)")
    a = ap.parse_args(argv)
    targets = [(a.store, "store")] if a.store else []
    targets += [(a.preview, "preview")] if a.preview else []
    cache = a.cache or (cache_dir() if a.world else None)
    targets += [(cache / "demo", "cache")] if cache else []
    refused = clean(targets)
    for line in refused:
        print(f"error: {line}", file=sys.stderr)
    return 2 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
