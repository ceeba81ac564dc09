"""The base of every config model and the YAML loading helpers (one-line errors for bad files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from msc_france.errors import BadInputError
from msc_france.paths import pipelines_dir


class StrictModel(BaseModel):
    """Base model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}")
    more = f" (+{err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return "; ".join(parts) + more


def load_yaml(path: Path) -> Any:
    """Read a YAML file, turning I/O and syntax errors into one-line BadInputErrors."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise BadInputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise BadInputError(f"expected a file, got a directory: {path}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise BadInputError(f"{path}:{where} invalid YAML") from None


def parse_model(model: type[StrictModel], data: Any, what: str) -> Any:
    """Validate ``data`` against ``model``, raising a one-line BadInputError on failure."""
    if not isinstance(data, dict):
        raise BadInputError(f"{what}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BadInputError(f"{what}: {_format_validation_error(e)}") from None


def load_config_mapping(name_or_path: str) -> tuple[Path, dict[str, Any]]:
    """A config given as a YAML path or a name under ``pipelines/``: its path and its mapping."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = pipelines_dir() / f"{name_or_path}.yaml"
    data = load_yaml(p)
    if not isinstance(data, dict):
        raise BadInputError(f"config {p}: expected a mapping at the top level")
    return p, data
