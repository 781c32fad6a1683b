"""Benchmark suite: ``python -m benchmarks.run`` (``make bench``); see docs/performance.md."""
