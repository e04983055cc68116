"""Measurement tools behind docs/results.md, run from the project root as `python -m benchmarks.<name>`."""
