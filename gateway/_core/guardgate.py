"""The guardrails phase's fast path: the compiled ``_guardgate`` module, or its twin ``guardgate_py`` (see
``gateway._core.load``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway._core.guardgate_py import *  # noqa: F403
    from gateway._core.guardgate_py import __all__ as __all__

    COMPILED: bool
else:
    from gateway._core import export

    export("guardgate", globals())
