"""Benchmark and load-test scripts (run as modules, e.g. `python -m tvmlm.bench.stress`)."""
