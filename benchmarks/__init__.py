"""Benchmarks: scripts that print a table and write JSON. Run them from the repository root
as modules, e.g. ``python -m benchmarks.perf``; see ``benchmarks/README.md``."""
