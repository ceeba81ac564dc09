"""Building stores: reading and warping chips (``read``) and running shard tasks on dask (``run``)."""

from msc_france.builder.run import BuildSummary, run_build

__all__ = ["BuildSummary", "run_build"]
