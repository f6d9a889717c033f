"""Deployment selection: the compiled ``_route`` module, or its twin ``route_py`` (see ``_core.load``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway._core.route_py import *  # noqa: F403
    from gateway._core.route_py import __all__ as __all__

    COMPILED: bool
else:
    from gateway._core import export

    export("route", globals())
