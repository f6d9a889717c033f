"""The canonical form of a JSON request body (the response cache's key): the compiled ``_canon`` module,
or its twin ``canon_py`` (see ``gateway._core.load``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway._core.canon_py import *  # noqa: F403
    from gateway._core.canon_py import __all__ as __all__

    COMPILED: bool
else:
    from gateway._core import export

    export("canon", globals())
