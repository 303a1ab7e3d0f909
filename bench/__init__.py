"""Benchmarks with in-run baselines: run each as `python -m bench.NAME` from the repository root."""
