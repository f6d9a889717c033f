"""Build the Cython core.

Compiled modules are listed explicitly: the core's ``.pyx`` modules here, each with a pure-Python twin in
the same package (``gateway/_core/*_py.py``) with the same API, which the tests compare against; and the
request-path modules compiled from their own ``.py`` (``SOURCE_MODULES`` in gateway/_core/__init__.py).

Switches:
  GATEWAY_REQUIRE_EXTENSIONS=1  fail the build loudly if any extension does not compile (CI sets it).
  GATEWAY_NO_EXTENSIONS=1       skip compiling; the runtime then uses the twins.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE = os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1"
SKIP = os.environ.get("GATEWAY_NO_EXTENSIONS") == "1"

# Each entry: compiled module name -> source. Why each is compiled is recorded in docs/architecture.md.
CORE_MODULES = {
    "gateway._core._http": "gateway/_core/_http.pyx",
    "gateway._core._sse": "gateway/_core/_sse.pyx",
    "gateway._core._limit": "gateway/_core/_limit.pyx",
    "gateway._core._route": "gateway/_core/_route.pyx",
    "gateway._core._jsoncheck": "gateway/_core/_jsoncheck.pyx",
    "gateway._core._cache": "gateway/_core/_cache.pyx",
    "gateway._core._scan": "gateway/_core/_scan.pyx",
    "gateway._core._guardgate": "gateway/_core/_guardgate.pyx",
    "gateway._core._awsevent": "gateway/_core/_awsevent.pyx",
    "gateway._core._recline": "gateway/_core/_recline.pyx",
    "gateway._core._canon": "gateway/_core/_canon.pyx",
}


def _source_modules() -> dict[str, str]:
    """Request-path modules compiled from their Python source, typed by the augmenting ``.pxd`` beside
    each; the ``.py`` is its own twin. The one list is ``SOURCE_MODULES`` in gateway/_core/__init__.py
    (whose finder applies the two switches to them), read here without importing the package."""
    import ast

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gateway", "_core", "__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        names = [getattr(t, "id", None) for t in node.targets] if isinstance(node, ast.Assign) else []
        if "SOURCE_MODULES" in names:
            return {name: name.replace(".", "/") + ".py" for name in ast.literal_eval(node.value)}
    raise RuntimeError("SOURCE_MODULES not found in gateway/_core/__init__.py")


SOURCE_MODULES = _source_modules()


class OptionalBuildExt(build_ext):
    """Build extensions; a failure is fatal only when GATEWAY_REQUIRE_EXTENSIONS=1."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if REQUIRE:
                raise
            print(f"WARNING: Cython core not built ({exc}); the pure-Python twins will be used",
                  file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE:
                raise
            print(f"WARNING: {ext.name} not built ({exc})", file=sys.stderr)


def extensions() -> list[Extension]:
    if SKIP:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        print("WARNING: Cython missing; the pure-Python twins will be used", file=sys.stderr)
        return []
    directives = {
        "language_level": "3",
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "embedsignature": True,
    }
    annotate = os.environ.get("GATEWAY_CYTHON_ANNOTATE") == "1"
    core = cythonize(
        [Extension(name, [src], extra_compile_args=["-O3"]) for name, src in CORE_MODULES.items()],
        compiler_directives=directives,
        annotate=annotate,
    )
    # A Python source's annotations are for mypy (``x: int`` would become a C int, ``-> None`` a
    # check): its C types come from its .pxd only.
    source = cythonize(
        [Extension(name, [src], extra_compile_args=["-O3"]) for name, src in SOURCE_MODULES.items()],
        compiler_directives={**directives, "annotation_typing": False},
        annotate=annotate,
    )
    return [*core, *source]

setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
