"""SSE framing: the compiled ``_sse`` module, or its twin ``sse_py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway._core import NO_EXTENSIONS, REQUIRE_EXTENSIONS

if TYPE_CHECKING:
    from gateway._core.sse_py import *  # noqa: F403
    COMPILED: bool
elif NO_EXTENSIONS:
    from gateway._core.sse_py import *  # noqa: F403
    COMPILED = False
else:
    try:
        from gateway._core._sse import *  # noqa: F403
        COMPILED = True
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        from gateway._core.sse_py import *  # noqa: F403
        COMPILED = False

from gateway._core.sse_py import __all__  # noqa: F401
