"""The ``msc-france`` command line: parse, call the library, print.

Every error the project knows about becomes one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import traceback

import click

from msc_france.cli import acquire, stores, train  # noqa: F401 (the commands register themselves)
from msc_france.cli.common import EXIT_INTERNAL, cli, say
from msc_france.errors import BadInputError, MscFranceError, printable

# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map errors to one-line messages and exit codes."""
    try:
        rv = cli.main(args=argv, prog_name="msc-france", standalone_mode=False)
        return int(rv) if isinstance(rv, int) else 0
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as e:
        say(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except MscFranceError as e:
        say(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except OSError as e:  # the environment: disk full, read-only or missing directory, permissions
        where = f": {e.filename}" if e.filename else ""
        say(f"error: {e.strerror or type(e).__name__}{where}", err=True)
        return 4
    except Exception as e:  # a bug: say so in one line, traceback on request
        if os.environ.get("MSC_FRANCE_DEBUG"):
            traceback.print_exc()
        first = printable(str(e).splitlines()[0] if str(e) else "")
        say(f"internal error: {type(e).__name__}: {first} (set MSC_FRANCE_DEBUG=1 for a traceback)", err=True)
        return EXIT_INTERNAL


def entry() -> None:
    """Console-script entry point: run the command, then leave without interpreter finalisation.

    Native thread pools (Arrow's, behind every GeoParquet read and write) can abort CPython's
    finalisation with "terminate called without an active exception" (SIGABRT, exit -6) after a
    command that succeeded and wrote everything (apache/arrow#34314; seen once here on ``plan``).
    Every file, client and cluster a command opens is closed before :func:`main` returns, so once
    Python-level garbage is collected and the streams are flushed, ``os._exit`` ends the process with
    the command's own exit code.
    """
    code = main()
    gc.collect()  # release native objects while their libraries are still alive
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``| head``) or a closed stream
            pass
    os._exit(code)


__all__ = ["cli", "main", "entry", "BadInputError"]
