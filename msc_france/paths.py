"""Where msc-france finds its shipped catalogs and pipelines, and where it caches.

The sensor catalogs, named regions and pipeline configs live in ``catalogs/`` and ``pipelines/`` at
the top of the repository and are shipped inside the wheel as the ``msc_france.catalogs`` and
``msc_france.pipelines`` packages. Each location can be overridden by an environment variable.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

#: The repository checkout, for editable installs and runs from source.
_CHECKOUT = Path(__file__).resolve().parents[1]

#: Environment variables that override the shipped directories.
CATALOGS_ENV = "MSC_FRANCE_CATALOGS"
PIPELINES_ENV = "MSC_FRANCE_PIPELINES"
CACHE_ENV = "MSC_FRANCE_CACHE"


def _shipped(package: str, env: str) -> Path:
    override = os.environ.get(env)
    if override:
        return Path(os.path.expandvars(override)).expanduser()
    try:  # a wheel install: package data beside the code
        root = importlib.resources.files(f"msc_france.{package}")
    except ModuleNotFoundError:  # editable install or source tree: the repository's own folder
        return _CHECKOUT / package
    return Path(str(root))


def catalogs_dir() -> Path:
    """Sensor catalogs and ``regions.geojson`` (``$MSC_FRANCE_CATALOGS`` overrides)."""
    return _shipped("catalogs", CATALOGS_ENV)


def pipelines_dir() -> Path:
    """Build recipes and train/eval configs (``$MSC_FRANCE_PIPELINES`` overrides)."""
    return _shipped("pipelines", PIPELINES_ENV)


def cache_dir() -> Path:
    """Per-user cache for search results and the generated demo world (``$MSC_FRANCE_CACHE`` overrides).

    Defaults to ``$XDG_CACHE_HOME/msc-france`` (``~/.cache/msc-france``).
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(os.path.expandvars(override)).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "msc-france"
