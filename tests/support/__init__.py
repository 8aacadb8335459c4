"""Test support that tests and benchmarks share, kept out of the `raylm` package: local multi-raylet Ray
clusters started with `ray start` (localray); loop observers that keep sample ledgers and hold checkpoint
writes open (observers, named in `trainer.observers` as "tests.support.observers:...")."""
