"""Benchmarks of fmsr: `fmsr-bench` times the runtime against PyTorch eager in one run.

Entry point: `benchmarks.bench:main`. The measured tables are in docs/benchmarks.md and
benchmarks/results/.
"""
