"""Benchmarks of the gateway against reference proxies (see ``bench/README.md``).

Run them as modules from the repository root: ``python -m bench.run`` (the whole suite, or ``bench/run``),
``python -m bench.proxy_vs_nginx``, ``python -m bench.inproc``.
"""
