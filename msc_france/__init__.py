"""msc-france: build the multi-sensor MSC-France dataset and train X-STARS models on it."""

import os

# OpenMP threads that wait for work spin (GNU libgomp, torch's runtime on Linux, spins 300,000
# times before sleeping): on a machine already loaded past its cores they burn the cores the
# working threads need, and a training step ran 4x slower at load 10. Sleeping at once
# (OMP_WAIT_POLICY=PASSIVE) fixes that but halves an idle machine's speed, so it is chosen only
# when the machine is loaded when msc-france starts: a 1-minute load average above twice the core
# count (a training run alone keeps it below the core count; docs/training.md). Read when torch
# loads its OpenMP runtime: every entry point imports this package first; a user who sets
# OMP_WAIT_POLICY or GOMP_SPINCOUNT keeps their choice.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    try:
        _loaded = os.getloadavg()[0] > 2 * (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        _loaded = False
    if _loaded:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

__version__ = "0.1.0"
