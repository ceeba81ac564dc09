"""Benchmarks run by `make bench` (results in docs/benchmarks.md)."""
