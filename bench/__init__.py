"""Benchmarks run on demand (``python -m bench.run``); not part of the test suite."""
