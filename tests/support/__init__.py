"""Test support that tests and benchmarks share, kept out of the `raylm` package: local multi-raylet Ray
clusters started with `ray start` (localray)."""
