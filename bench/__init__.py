"""Benchmarks of the gateway against reference proxies (see ``bench/README.md``).

Run a benchmark as a module from the repository root, e.g. ``python -m bench.proxy_vs_nginx``.
"""
