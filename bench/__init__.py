"""Benchmarks: synthetic policies and whole-process timings (see bench/run.py)."""
