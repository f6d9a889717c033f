"""AWS event-stream framing: the compiled ``_awsevent`` module, or its twin ``awsevent_py`` (see
``gateway._core.load``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway._core.awsevent_py import *  # noqa: F403
    from gateway._core.awsevent_py import __all__ as __all__

    COMPILED: bool
else:
    from gateway._core import export

    export("awsevent", globals())
