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


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one
    silently: a recipe naming a sensor twice would build with whichever came last).
    """


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # the base constructor reports unhashable keys
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first at line {seen[key].line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def safe_load_unique(stream: Any) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (``yaml.constructor.ConstructorError``)."""
    return yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: Path) -> Any:
    """Read a YAML file, turning I/O and syntax errors (and duplicate keys) into one-line BadInputErrors."""
    try:
        with open(path, encoding="utf-8") as f:
            return safe_load_unique(f)
    except FileNotFoundError:
        raise BadInputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise BadInputError(f"expected a file, got a directory: {path}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = str(getattr(e, "problem", "") or "")
        if problem.startswith("duplicate key"):
            raise BadInputError(f"{path}:{where} {problem}") from None
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
