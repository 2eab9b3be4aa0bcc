"""Benchmarks for Verzilvering; each module runs with `python -m bench.<name>`."""
