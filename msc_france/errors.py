"""The project's exception hierarchy.

Library code raises these; the CLI turns them into one-line messages and exit codes.
"""


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
