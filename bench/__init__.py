"""Benchmarks that compare modelfleet with baselines measured side by side in the same run.

A ratio against a baseline taken minutes earlier on the same (busy, 2-core) box
says more than an absolute number: `python -m bench.ingress`, `python -m bench.embeddings`.
Results land in bench/results/ (not versioned); BENCHMARKS.md records runs worth keeping.
"""
