"""The project's exception hierarchy.

Library code raises these; the CLI turns them into one-line messages and exit codes.
"""


def printable(text: str) -> str:
    r"""``text`` safe to print on one line: control characters (a newline in a file name would forge
    a second ``error:`` line) and the surrogates that stand for non-UTF-8 bytes in file names are
    written as escapes (``\n``, ``\x1b``, ``\xff``).
    """
    out = []
    for c in text:
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's surrogateescape: the original byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or 0x7F <= o < 0xA0 or 0xD800 <= o < 0xE000 or o in (0x2028, 0x2029):
            out.append(c.encode("unicode_escape").decode("ascii") if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(c)
    return "".join(out)


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), bounded."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:limit]


class MscFranceError(Exception):
    """Base class of every error msc-france reports to a user."""

    exit_code = 1


class BadInputError(MscFranceError):
    """A user-supplied value (region, bbox, config, path) is invalid."""

    exit_code = 2


class SourceError(MscFranceError):
    """A data source (STAC API, static catalog, asset) failed or returned unusable data."""

    exit_code = 3


class StoreError(MscFranceError):
    """A store is missing, locked, corrupt, incomplete or of an unsupported format."""

    exit_code = 4


class BuildFailedError(MscFranceError):
    """A build finished but some chips failed."""

    exit_code = 5


class IngestIncompleteError(MscFranceError):
    """``catalog ingest`` wrote its catalog but skipped some input files (each listed)."""

    exit_code = 6


class TrainingError(MscFranceError):
    """Training cannot go on (NaN loss, unusable checkpoint)."""

    exit_code = 7
