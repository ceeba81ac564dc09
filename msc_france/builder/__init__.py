"""Building stores: warping one asset (``warp``), reading one chip of one sensor (``read``), running
shard tasks (``run``) where the scheduler says (``scheduler``).
"""

from msc_france.builder.run import BuildSummary, run_build

__all__ = ["BuildSummary", "run_build"]
