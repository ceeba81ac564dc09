"""``python -m msc_france``: the command line."""

from msc_france.cli import entry

if __name__ == "__main__":
    entry()
