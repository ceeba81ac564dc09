"""``python -m msc_france.cli`` (the form torchrun uses)."""

from msc_france.cli import entry

entry()
