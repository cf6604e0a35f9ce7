"""Throughput benchmarks; each writes benchmarks/results/<name>.json. Never part of the tests."""
