"""The call records' JSON line writer: the compiled ``_recline`` module, or its twin ``recline_py`` (see
``gateway._core.load``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway._core.recline_py import *  # noqa: F403
    from gateway._core.recline_py import __all__ as __all__

    COMPILED: bool
else:
    from gateway._core import export

    export("recline", globals())
