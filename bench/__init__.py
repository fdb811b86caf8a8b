"""Benchmarks. Performance is measured here, never asserted in tests: every result is a ratio
against a baseline run in the same process (or the same run), repetitions interleaved, medians
taken. One JSON object per measurement in `bench/results/`, summarised in `bench/RESULTS.md`."""
