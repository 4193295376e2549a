"""Benchmarks: each ``bench/bench_*.py`` measures cryptboot side by side with a peer."""
