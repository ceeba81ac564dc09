"""What every command shares: the ``msc-france`` group, one-line printing, progress bars and logging."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from msc_france.errors import printable
from msc_france.progress import Bar

EXIT_INTERNAL = 70


def say(text: str, err: bool = False) -> None:
    """Print one line: names from files and catalogs in it escaped (see ``printable``)."""
    click.echo(printable(text), err=err)


def echo_table(rows: list[list[Any]], header: list[str]) -> None:
    """Print ``rows`` as an aligned table under ``header`` (cells escaped)."""
    widths = [max(len(printable(str(x))) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*header))
    click.echo(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        click.echo(fmt.format(*(printable(str(x)) for x in r)))


class _OneLineFormatter(logging.Formatter):
    """Log records on one line each: names in messages cannot forge lines (see ``printable``)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """The record's line, escaped (a traceback asked for with -vv stays as it is)."""
        return printable(super().formatMessage(record))


def setup_logging(verbose: int, quiet: bool) -> None:
    """msc-france's loggers to stderr: INFO by default, DEBUG with -v, everything with -vv, WARNING with -q."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"
    handler.setFormatter(_OneLineFormatter(fmt))
    ours = logging.getLogger("msc_france")
    ours.handlers[:] = [handler]
    ours.setLevel(level)
    ours.propagate = False
    if verbose > 1:  # third-party libraries too (dask, rasterio, urllib3)
        logging.basicConfig(level=logging.DEBUG, format=fmt, stream=sys.stderr, force=True)


def quiet_mode() -> bool:
    """Whether the global ``-q`` was given."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.params.get("quiet"))


def progress_bar(desc: str, unit: str, quiet: bool = False) -> Bar:
    """A progress bar on stderr, hidden by -q (or a command's own --quiet)."""
    return Bar(desc, unit, enabled=not (quiet or quiet_mode()))


def selection_options(fn: Any) -> Any:
    """``--split`` (repeatable) and ``--where``: the chips a store command reads, as one
    :class:`~msc_france.selection.ChipSelection` passed to the command as ``selection``.
    """
    from functools import wraps

    from msc_france.splits import ALL_SPLITS

    @click.option("--split", "splits", type=click.Choice(ALL_SPLITS), multiple=True,
                  help="only chips of this split (repeatable; default: every split)")
    @click.option("--where", default=None, help="only chips for which this expression over the index's columns "
                  "holds, e.g. \"cloud_fraction_sentinel_2_l2a < 0.1\" (docs/dataset-format.md)")
    @wraps(fn)
    def wrapped(*args: Any, splits: tuple[str, ...], where: str | None, **kwargs: Any) -> Any:
        from msc_france.selection import ChipSelection

        return fn(*args, selection=ChipSelection(splits or None, None, where), **kwargs)

    return wrapped


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON (for ``--json``)."""
    click.echo(json.dumps(data, indent=1, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="msc-france")
@click.option("-v", "--verbose", count=True, help="more log output (-v: debug, -vv: libraries too)")
@click.option("-q", "--quiet", is_flag=True, help="warnings and errors only, no progress bars")
def cli(verbose: int, quiet: bool) -> None:
    """Build the multi-sensor MSC-France dataset and train X-STARS models on it."""
    setup_logging(verbose, quiet)


