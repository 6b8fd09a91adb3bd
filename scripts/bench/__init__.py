"""The benchmark's parts (scripts/benchmark.py runs them in one run)."""
