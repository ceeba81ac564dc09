"""msc-france: build the multi-sensor MSC-France dataset and train X-STARS models on it."""

import os

# OpenMP threads that wait for work spin (GNU libgomp, torch's runtime on Linux, spins 300,000
# times before sleeping): on a loaded CPU machine they burn the cores the working threads need,
# and a training step runs 4-6x slower at load 10. Spinning 10,000 times keeps the idle machine's
# speed (sleeping at once, OMP_WAIT_POLICY=PASSIVE, halves it) and most of the loaded one's
# (docs/benchmarks.md, section omp). Read when torch loads its OpenMP runtime: every entry point
# imports this package first; a user who sets either variable keeps their choice.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
