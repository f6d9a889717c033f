"""The compiled, sans-IO core: bytes and the current time in, decisions and events out.

Each compiled module ``_name`` (from ``_name.pyx``) has a pure-Python twin ``name_py`` with the same API,
and a facade ``name`` that picks one. ``GATEWAY_NO_EXTENSIONS=1`` forces the twins (the tests use it to
compare both); ``GATEWAY_REQUIRE_EXTENSIONS=1`` makes a missing extension an import error instead of a
silent fallback.
"""

from __future__ import annotations

import os

__all__ = ["NO_EXTENSIONS", "REQUIRE_EXTENSIONS", "compiled"]

NO_EXTENSIONS = os.environ.get("GATEWAY_NO_EXTENSIONS") == "1"
REQUIRE_EXTENSIONS = os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1"


def compiled() -> dict[str, bool]:
    """Which core modules run compiled in this process (for ``/readyz`` and ``gateway check``)."""
    from gateway._core import http, sse

    return {m.__name__.rsplit(".", 1)[-1]: m.COMPILED for m in (http, sse)}
