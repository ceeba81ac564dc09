"""The base of every config model and the YAML loading helpers (one-line errors for bad files)."""

from __future__ import annotations

import os
import re
import stat
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


MAX_CONFIG_BYTES = 16 * 2**20

#: Names that become file or folder names (collection ids, sensor names): no separators, no "..",
#: no control characters, no leading dot or dash.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(value: str, what: str) -> str:
    """``value`` when it is safe as one path component (see ``SAFE_NAME``); else ValueError.

    Raises:
        ValueError: naming ``what`` (pydantic validators turn it into the config's one-line error).
    """
    if not SAFE_NAME.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not allowed: letters, digits, '.', '_' and '-' only, "
                         "starting with a letter or digit, no '..', at most 128 characters")
    return value


def load_yaml(path: Path) -> Any:
    """Read a YAML file, turning I/O and syntax errors (and duplicate keys) into one-line BadInputErrors.

    Only regular files are opened (a FIFO or a device would block or never end), of at most
    ``MAX_CONFIG_BYTES``, in UTF-8.
    """
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st.st_mode):
            raise BadInputError(f"not a regular file (a FIFO, socket or device): {path}")
        if st.st_size > MAX_CONFIG_BYTES:
            raise BadInputError(f"{path}: {st.st_size} bytes, more than a configuration file may hold "
                                f"({MAX_CONFIG_BYTES})")
        with open(path, encoding="utf-8") as f:
            return safe_load_unique(f)
    except FileNotFoundError:
        raise BadInputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise BadInputError(f"expected a file, got a directory: {path}") from None
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
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
