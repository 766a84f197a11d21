"""Benchmarks that print figures; run them as modules, e.g. `python -m bench.http_bench --spawn`.

Nothing here is imported by the server, and nothing here runs in the default test suite.
"""
