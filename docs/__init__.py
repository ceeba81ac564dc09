"""The documentation (its figure scripts live in docs.scripts)."""
