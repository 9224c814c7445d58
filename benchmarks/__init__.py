"""Benchmarks that measure the SFU as a separate process (see benchmarks/RESULTS.md)."""
