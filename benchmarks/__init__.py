"""Benchmarks of the journey engine, each a module run from the repository root as
`.venv/bin/python -m benchmarks.NAME` (`--help` says what it measures); results go to `BENCHMARKS.md`
and `benchmarks/results/`. `benchmarks._harness` holds what they share."""
