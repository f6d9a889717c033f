"""The compiled, sans-IO core: bytes and the current time in, decisions and events out.

Each compiled module ``_name`` (from ``_name.pyx``) has a pure-Python twin ``name_py`` with the same API,
and a facade ``name`` that picks one. ``GATEWAY_NO_EXTENSIONS=1`` forces the twins (the tests use it to
compare both); ``GATEWAY_REQUIRE_EXTENSIONS=1`` makes a missing extension an import error instead of a
silent fallback.

The request path around the core (the listener, the upstream pool, the engine: ``SOURCE_MODULES``) is
compiled from its own Python source, typed by the augmenting ``.pxd`` beside each file; the ``.py`` is its
own twin. The same two switches apply to them through ``SourceModuleFinder``: with
``GATEWAY_NO_EXTENSIONS=1`` the ``.py`` is imported even where the extension is built, and with
``GATEWAY_REQUIRE_EXTENSIONS=1`` a module that would load from its ``.py`` is an import error.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = [
    "NO_EXTENSIONS", "REQUIRE_EXTENSIONS", "SOURCE_MODULES", "SourceModuleFinder", "compiled", "export",
    "install_source_finder", "load",
]

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


#: request-path modules compiled from their Python source; setup.py reads this tuple (the one list)
SOURCE_MODULES = (
    "gateway.context", "gateway.engine", "gateway.providers.openai", "gateway.server.listener",
    "gateway.server.pool", "gateway.observe.rows", "gateway.observe.genai", "gateway.cache.phase",
    "gateway.providers.anthropic",
    # the translated path (compiled with Python's indexing and division: the header of each file)
    "gateway.providers.bridge", "gateway.dialects.openai_chat", "gateway.dialects.anthropic_messages",
    "gateway.providers.anthropic_translate", "gateway.providers.openai_translate",
    "gateway.providers.gemini_translate", "gateway.providers.bedrock_translate",
)


class SourceModuleFinder(importlib.abc.MetaPathFinder):
    """Applies the two switches to ``SOURCE_MODULES``, whose extension and source sit side by side
    (Python's own import system would always prefer the extension, and fall back to the source silently)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in SOURCE_MODULES:
            return None
        if NO_EXTENSIONS:
            leaf = fullname.rpartition(".")[2]
            for entry in path or ():
                source = os.path.join(entry, leaf + ".py")
                if os.path.isfile(source):
                    return importlib.util.spec_from_file_location(fullname, source)
            return None
        if REQUIRE_EXTENSIONS:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is not None and not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
                raise ImportError(
                    f"{fullname} is not compiled (GATEWAY_REQUIRE_EXTENSIONS=1): build it with "
                    "`python setup.py build_ext --inplace` or reinstall the package",
                    name=fullname,
                )
            return spec
        return None


def install_source_finder() -> None:
    """Put ``SourceModuleFinder`` first on ``sys.meta_path`` (once; ``gateway/__init__.py`` calls it)."""
    if NO_EXTENSIONS or REQUIRE_EXTENSIONS:
        if not any(isinstance(f, SourceModuleFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, SourceModuleFinder())


def _is_extension(name: str) -> bool:
    module = importlib.import_module(name)
    return (getattr(module, "__file__", None) or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled() -> dict[str, bool]:
    """Which modules run compiled in this process (for ``gateway check`` and the benchmarks): the core's
    and the request path's."""
    from gateway._core import (
        awsevent,
        cache,
        canon,
        guardgate,
        http,
        jsoncheck,
        limit,
        recline,
        route,
        scan,
        sse,
    )

    core = (http, limit, route, sse, jsoncheck, cache, scan, guardgate, awsevent, recline, canon)
    out = {m.__name__.rsplit(".", 1)[-1]: m.COMPILED for m in core}
    for name in SOURCE_MODULES:
        out[name.rsplit(".", 1)[-1]] = _is_extension(name)
    return out
