"""Benchmarks of pipemon (see bench/README.md); run from the repository root as modules,
e.g. `python -m bench.peers --quick`, so that `testkit` and `bench` import."""
