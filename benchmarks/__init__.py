"""Benchmarks for asarm_jax: `python -m benchmarks.sampling` (see benchmarks/README.md)."""
