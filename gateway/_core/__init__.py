"""The compiled, sans-IO core: bytes and the current time in, decisions and events out.

Each compiled module ``_name`` (from ``_name.pyx``) has a pure-Python twin ``name_py`` with the same API,
and a facade ``name`` that picks one. ``GATEWAY_NO_EXTENSIONS=1`` forces the twins (the tests use it to
compare both); ``GATEWAY_REQUIRE_EXTENSIONS=1`` makes a missing extension an import error instead of a
silent fallback.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

__all__ = ["NO_EXTENSIONS", "REQUIRE_EXTENSIONS", "compiled", "export", "load"]

NO_EXTENSIONS = os.environ.get("GATEWAY_NO_EXTENSIONS") == "1"
REQUIRE_EXTENSIONS = os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1"


def load(name: str) -> tuple[ModuleType, bool]:
    """The implementation of core module ``name``: the compiled ``_name`` or the twin ``name_py``.

    Returns the module and whether it is the compiled one.
    """
    if not NO_EXTENSIONS:
        try:
            return importlib.import_module(f"gateway._core._{name}"), True
        except ImportError:
            if REQUIRE_EXTENSIONS:
                raise
    return importlib.import_module(f"gateway._core.{name}_py"), False


def export(name: str, namespace: dict[str, Any]) -> None:
    """Fill a facade module's namespace with the public names of the chosen implementation."""
    module, is_compiled = load(name)
    twin = importlib.import_module(f"gateway._core.{name}_py")
    namespace.update({k: getattr(module, k) for k in twin.__all__})
    namespace["__all__"] = list(twin.__all__)
    namespace["COMPILED"] = is_compiled


def compiled() -> dict[str, bool]:
    """Which core modules run compiled in this process (for ``/readyz`` and ``gateway check``)."""
    from gateway._core import http, limit, route, sse

    return {m.__name__.rsplit(".", 1)[-1]: m.COMPILED for m in (http, limit, route, sse)}
